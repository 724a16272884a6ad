//! The metrics reference (docs/metrics.md) lists exactly the metrics the proxy and the
//! controller export, with their kind, and the Grafana dashboard queries only those.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every metric name the code declares: the string constants of the metrics modules, which
/// every `counter!`, `gauge!` and `histogram!` call goes through.
fn exported() -> BTreeSet<String> {
    ["proxy/src/metrics.rs", "controller/src/metrics.rs"]
        .iter()
        .flat_map(|f| {
            read(f)
                .lines()
                .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \"palisade_"))
                .filter_map(|l| Some(l.split('"').nth(1)?.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The reference's tables: metric name -> kind.
fn documented() -> BTreeMap<String, String> {
    read("docs/metrics.md")
        .lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.next()?;
            name.starts_with("palisade_")
                .then(|| (name.to_owned(), kind.to_owned()))
        })
        .collect()
}

#[test]
fn every_exported_metric_is_documented_and_nothing_else() {
    let exported = exported();
    let documented = documented();
    assert!(
        exported.len() >= 20,
        "the metrics modules were read: {exported:?}"
    );
    let names: BTreeSet<String> = documented.keys().cloned().collect();
    let missing: Vec<_> = exported.difference(&names).collect();
    let extra: Vec<_> = names.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "exported but not in docs/metrics.md: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "in docs/metrics.md but not exported: {extra:?}"
    );
    for (name, kind) in &documented {
        assert!(
            ["counter", "gauge", "histogram", "summary"].contains(&kind.as_str()),
            "{name}: kind {kind:?}"
        );
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}: counters, and only they, end in _total"
        );
    }
}

/// The metric names a PromQL expression uses, with a histogram's series suffixes removed.
fn metrics_in(expr: &str, documented: &BTreeMap<String, String>) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("palisade_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let base = w.strip_suffix(s)?;
                    (documented.get(base)? == "histogram").then(|| base.to_owned())
                })
                .unwrap_or_else(|| w.to_owned())
        })
        .collect()
}

#[test]
fn the_grafana_dashboard_queries_only_documented_metrics() {
    let documented = documented();
    let dashboard: Value = serde_json::from_str(&read("charts/palisade/dashboards/palisade.json"))
        .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("a title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = metrics_in(expr, &documented);
            assert!(
                !names.is_empty(),
                "{title}: {expr} names no palisade metric"
            );
            for name in names {
                assert!(
                    documented.contains_key(&name),
                    "{title}: {expr} uses {name}, which is not exported"
                );
                used.insert(name);
            }
        }
    }
    // What the issue asks the dashboard to show.
    for needed in [
        "palisade_flows_total",
        "palisade_http_requests_total",
        "palisade_policy_version",
        "palisade_controller_push_seconds",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
}
