//! `palisade lint` on the examples users start from: the seeds' traps are found where they
//! are, the three-tier example is clean, SARIF is what code scanning reads, and the exit code
//! follows the worst severity. One test per check on a minimal manifest lives beside each
//! check in policy/src/lint/.

use std::path::Path;
use std::process::Command;

use palisade_policy::lint::Check;
use serde_json::Value;

/// Runs `palisade lint` with `args`; gives the exit code and standard output.
fn lint(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("lint")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run palisade");
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("UTF-8 output"),
    )
}

/// The findings of `lint -o json` on `path`.
fn findings(path: &str) -> Vec<Value> {
    let (_, out) = lint(&["-o", "json", path]);
    let doc: Value = serde_json::from_str(&out).expect("JSON output");
    doc["findings"].as_array().expect("findings").clone()
}

fn with<'a>(found: &'a [Value], check: &str, object: &str) -> Vec<&'a Value> {
    found
        .iter()
        .filter(|f| f["check"] == check && f["object"] == object)
        .collect()
}

/// The line `line` (1-based) of a file of the repository.
fn line_of(file: &str, line: u64) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .expect("the finding's file exists");
    text.lines()
        .nth(line as usize - 1)
        .expect("the finding's line exists")
        .to_owned()
}

#[test]
fn seed_000s_dns_rule_is_flagged_with_what_it_really_allows() {
    let found = findings("examples/seed-zero-trust-patterns");
    let or = with(&found, "or-not-and", "NetworkPolicy production/allow-dns");
    assert_eq!(or.len(), 1, "{found:#?}");
    let f = or[0];
    assert_eq!(f["file"], "examples/seed-zero-trust-patterns/egress.yaml");
    assert_eq!(f["field"], "spec.egress[0].to[1]");
    assert!(
        line_of(
            "examples/seed-zero-trust-patterns/egress.yaml",
            f["line"].as_u64().unwrap()
        )
        .contains("- podSelector:"),
        "the line is the second peer's"
    );
    let message = f["message"].as_str().unwrap();
    assert!(
        message.contains(
            "on 53/UDP this rule lets the pods reach every pod in namespaces name=kube-system \
             (now: kube-system/coredns) OR pods k8s-app=kube-dns in namespace production (now: none)"
        ),
        "{message}"
    );
    let fix = f["fix"].as_str().unwrap();
    assert!(
        fix.contains("- namespaceSelector: {matchLabels: {name: kube-system}}\n  podSelector: {matchLabels: {k8s-app: kube-dns}}"),
        "{fix}"
    );
    // The same peer looks for DNS pods in production, where there are none.
    assert_eq!(
        with(
            &found,
            "pods-in-other-namespace",
            "NetworkPolicy production/allow-dns"
        )
        .len(),
        1
    );
}

#[test]
fn the_three_tier_example_is_clean() {
    let (code, out) = lint(&["examples/three-tier"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, "no findings in 7 policies and 5 pods\n");
}

#[test]
fn the_seeds_traps_are_found_where_they_are() {
    // (folder, check, object, field) for each trap the examples' READMEs describe.
    let expected = [
        (
            "seed-zero-trust",
            "no-dns",
            "NetworkPolicy production/allow-dns",
            "spec.egress[0]",
        ),
        (
            "seed-zero-trust",
            "ipblock-holds-pods",
            "NetworkPolicy production/backend-allow-external",
            "spec.egress[0].to[0]",
        ),
        (
            "seed-zero-trust-patterns",
            "ipblock-holds-pods",
            "NetworkPolicy production/allow-health-checks",
            "spec.ingress[0].from[0]",
        ),
        (
            "seed-zero-trust-patterns",
            "redundant-rule",
            "NetworkPolicy production/allow-external-api",
            "spec.egress[1]",
        ),
        (
            "seed-zero-trust-patterns",
            "no-dns",
            "NetworkPolicy default/deny-all",
            "spec.podSelector",
        ),
        (
            "seed-isolation",
            "or-not-and",
            "NetworkPolicy demo/reports-from-frontend-or-monitoring",
            "spec.ingress[0].from[0]",
        ),
        (
            "seed-patterns",
            "l7-overridden",
            "CiliumNetworkPolicy production/api-l7-policy",
            "spec.ingress[0].toPorts[0].ports[0]",
        ),
        (
            "seed-patterns",
            "no-dns",
            "NetworkPolicy team-a/namespace-isolation",
            "spec.podSelector",
        ),
        (
            "seed-intro",
            "no-dns",
            "NetworkPolicy my-namespace/allow-private-network",
            "spec.podSelector",
        ),
    ];
    for (folder, check, object, field) in expected {
        let found = findings(&format!("examples/{folder}"));
        let hits = with(&found, check, object);
        assert!(
            hits.iter().any(|f| f["field"] == field),
            "examples/{folder}: no {check} on {object} {field}; found:\n{found:#?}"
        );
    }
}

#[test]
fn every_finding_names_its_file_line_object_field_why_and_fix() {
    for folder in [
        "seed-intro",
        "seed-isolation",
        "seed-patterns",
        "seed-zero-trust",
        "seed-zero-trust-patterns",
    ] {
        let found = findings(&format!("examples/{folder}"));
        assert!(!found.is_empty(), "examples/{folder}");
        for f in &found {
            let file = f["file"].as_str().unwrap();
            assert!(file.starts_with(&format!("examples/{folder}/")), "{f:#}");
            let line = f["line"].as_u64().unwrap();
            assert!(line >= 1, "{f:#}");
            line_of(file, line);
            for key in ["object", "field", "message", "why", "fix"] {
                assert!(!f[key].as_str().unwrap().is_empty(), "{key} of {f:#}");
            }
            assert!(["error", "warning", "note"].contains(&f["severity"].as_str().unwrap()));
        }
    }
}

#[test]
fn sarif_has_what_code_scanning_reads() {
    let (code, out) = lint(&["-o", "sarif", "examples/seed-zero-trust-patterns"]);
    assert_eq!(code, Some(3), "errors give 3");
    let log: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(log["version"], "2.1.0");
    assert_eq!(
        log["$schema"],
        "https://json.schemastore.org/sarif-2.1.0.json"
    );
    let run = &log["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "palisade");
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, Check::ALL.iter().map(|c| c.id()).collect::<Vec<_>>());
    for r in rules {
        assert!(!r["shortDescription"]["text"].as_str().unwrap().is_empty());
        assert!(["error", "warning", "note"]
            .contains(&r["defaultConfiguration"]["level"].as_str().unwrap()));
    }
    let results = run["results"].as_array().unwrap();
    let json = findings("examples/seed-zero-trust-patterns");
    assert_eq!(results.len(), json.len(), "one result per finding");
    for (r, f) in results.iter().zip(&json) {
        let index = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(r["ruleId"], ids[index]);
        assert_eq!(r["ruleId"], f["check"]);
        assert_eq!(r["level"], f["severity"]);
        let text = r["message"]["text"].as_str().unwrap();
        assert!(text.contains(f["message"].as_str().unwrap()), "{text}");
        let location = &r["locations"][0]["physicalLocation"];
        assert_eq!(location["artifactLocation"]["uri"], f["file"]);
        assert_eq!(location["region"]["startLine"], f["line"]);
        assert!(r["partialFingerprints"]
            .as_object()
            .is_some_and(|p| !p.is_empty()));
    }
}

#[test]
fn the_exit_code_follows_the_worst_severity() {
    // Warnings only.
    assert_eq!(lint(&["examples/seed-isolation"]).0, Some(1));
    // Warnings left out: nothing else.
    let (code, out) = lint(&[
        "examples/seed-isolation",
        "--skip",
        "or-not-and",
        "--skip",
        "not-injected",
    ]);
    assert_eq!(code, Some(0), "{out}");
    // Errors.
    assert_eq!(lint(&["examples/seed-intro"]).0, Some(3));
    // Invalid manifests are bad input, and show as findings too.
    let (code, out) = lint(&["-o", "json", "tests/bad-input"]);
    assert_eq!(code, Some(2));
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert!(doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["check"] == "invalid-object" && f["file"] == "tests/bad-input/bad-cidr.yaml"));
    // An unknown check is refused with the list of checks.
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["lint", "examples/three-tier", "--skip", "dns"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the checks are: invalid-object, no-dns"));
}

#[test]
fn text_output_reads_like_a_compiler() {
    let (_, out) = lint(&["examples/seed-isolation"]);
    assert!(
        out.contains(
            "examples/seed-isolation/and-or.yaml:17: warning[or-not-and] \
             NetworkPolicy demo/reports-from-frontend-or-monitoring spec.ingress[0].from[0]\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("\n  why: Two entries of a from/to list are two peers"),
        "{out}"
    );
    assert!(
        out.contains("\n  fix: if you meant pods app=frontend in namespaces name=monitoring"),
        "{out}"
    );
    assert!(
        out.ends_with("0 errors, 3 warnings, 0 notes in 6 policies and 8 pods\n"),
        "{out}"
    );
}

#[test]
fn every_check_is_documented() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/lint.md"))
        .expect("docs/lint.md");
    for c in Check::ALL {
        assert!(
            doc.contains(&format!("| `{}` | {} |", c.id(), c.severity())),
            "docs/lint.md does not document {} ({})",
            c.id(),
            c.severity()
        );
    }
}
