//! Conformance with the upstream Kubernetes network-policy e2e suite (kubernetes/kubernetes,
//! test/e2e/network/netpol/network_policy.go): `simulate`'s verdicts on every case of
//! `tests/conformance/` (see tests/expect/mod.rs for the format) against upstream's
//! matrices, for the pods' primary addresses and, where the case names no address, for
//! their other family too. A failing case prints the expected and observed matrices side
//! by side.

mod expect;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::Path;

use expect::{cases, conformance_dir, parse_expect, Case, Cell, Expectation, Matrix, PortPair};
use palisade_policy::cluster::{Cluster, Family};
use palisade_policy::manifest::{load_str, Report};
use palisade_policy::simulate::simulate_with_self;

/// The suite re-expresses at least this many upstream scenarios.
const MIN_CASES: usize = 45;

/// The matrices palisade gives for a cluster over `family`, one per port/protocol some pod
/// serves, each pod's flows to itself included.
fn observe(cluster: &Cluster, family: Family) -> BTreeMap<PortPair, Matrix> {
    let pods: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
    let index: HashMap<&str, usize> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let mut matrices: BTreeMap<PortPair, Matrix> = cluster
        .pods
        .iter()
        .flat_map(|p| &p.ports)
        .map(|c| {
            let pair = PortPair {
                protocol: c.protocol,
                port: c.port,
            };
            (pair, Matrix::filled(pods.clone(), Cell::NotServed))
        })
        .collect();
    for flow in simulate_with_self(cluster).flows {
        if flow.family != family {
            continue;
        }
        let pair = PortPair {
            protocol: flow.protocol,
            port: flow.port,
        };
        let cell = if flow.allowed {
            Cell::Allowed
        } else {
            Cell::Denied
        };
        if let Some(m) = matrices.get_mut(&pair) {
            m.set(index[flow.from.as_str()], index[flow.to.as_str()], cell);
        }
    }
    matrices
}

fn load(cluster: &mut Cluster, path: &Path) -> Result<(), String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let mut report = Report::default();
    load_str(cluster, &file, &text, &mut report);
    if report.errors.is_empty() {
        Ok(())
    } else {
        let errors: Vec<String> = report.errors.iter().map(|e| format!("    {e}")).collect();
        Err(format!("the manifests do not load:\n{}", errors.join("\n")))
    }
}

/// Checks one case: `Ok` with the report of its mismatches (empty when it holds), or
/// `Err` when it cannot be checked at all.
fn check(case: &Case) -> Result<String, String> {
    let mut cluster = Cluster::default();
    load(&mut cluster, &conformance_dir().join("model.yaml"))?;
    load(&mut cluster, &case.yaml_path)?;
    cluster.finish();
    cluster.assign_missing_ips();

    let pods: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
    let expectation = Expectation::read(case, &pods)?;
    let families = expect::families(case, &cluster);
    if families.is_empty() {
        return Err("the case has no pod with an address".into());
    }
    let mut report = String::new();
    for family in families {
        let observed = observe(&cluster, family);
        let pairs: BTreeSet<PortPair> = observed
            .keys()
            .copied()
            .chain(expectation.named_pairs())
            .collect();
        // A pod without an address of this family has no flow in it: nothing to compare.
        let has = |i: usize| cluster.pods[i].ip_of(family).is_some();
        let mismatches = expectation.compare(&pairs, &observed, |i, j| has(i) && has(j))?;
        if !mismatches.is_empty() {
            report += &expect::report(case, &format!("simulate over {family}"), &mismatches);
        }
    }
    Ok(report)
}

#[test]
fn palisade_agrees_with_the_upstream_e2e_suite() {
    let cases = cases();
    let mut report = String::new();
    let mut failed = Vec::new();
    for case in &cases {
        match check(case) {
            Ok(r) if r.is_empty() => {}
            Ok(r) => {
                failed.push(case.name.clone());
                report.push_str(&r);
            }
            Err(e) => {
                failed.push(case.name.clone());
                report.push_str(&format!(
                    "\n=== {}: upstream {}\n  cannot check: {e}\n",
                    case.name,
                    case.upstream()
                ));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{report}\n{} of {} conformance cases disagree with upstream: {}",
        failed.len(),
        cases.len(),
        failed.join(", ")
    );
}

#[test]
fn every_case_has_its_expectation_and_upstream_name() {
    let mut stems: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in fs::read_dir(expect::cases_dir()).expect("tests/conformance/cases is readable") {
        let name = entry
            .expect("a directory entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let Some((stem, ext)) = name.rsplit_once('.') else {
            panic!("{name}: a case file is NNN-slug.yaml or NNN-slug.expect");
        };
        stems
            .entry(stem.to_owned())
            .or_default()
            .insert(ext.to_owned());
    }
    let mut problems = Vec::new();
    for (stem, exts) in &stems {
        for ext in exts
            .iter()
            .filter(|e| !matches!(e.as_str(), "yaml" | "expect"))
        {
            problems.push(format!(
                "{stem}.{ext}: a case file is NNN-slug.yaml or NNN-slug.expect"
            ));
        }
        for needed in ["yaml", "expect"] {
            if !exts.contains(needed) {
                problems.push(format!("{stem}: no {stem}.{needed}"));
            }
        }
        if exts.contains("yaml") {
            let text = fs::read_to_string(expect::cases_dir().join(format!("{stem}.yaml")))
                .unwrap_or_default();
            let first = text.lines().next().unwrap_or_default();
            let named = first
                .strip_prefix("# upstream: \"")
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('"'));
            if !named {
                problems.push(format!(
                    "{stem}.yaml: the first line must be `# upstream: \"<the It(...) description>\"`"
                ));
            }
        }
    }
    let complete = stems
        .values()
        .filter(|e| e.contains("yaml") && e.contains("expect"))
        .count();
    if complete < MIN_CASES {
        problems.push(format!(
            "only {complete} cases; the suite needs at least {MIN_CASES}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn expect_files_name_the_line_at_fault() {
    let short_row = "TCP/80\n     x/a x/b\nx/a   .   X\nx/b   .\n";
    assert_eq!(
        parse_expect(short_row).unwrap_err(),
        "line 4: row x/b has 1 cells for 2 columns"
    );
    let no_header = "# c\n     x/a\nx/a .\n";
    assert!(parse_expect(no_header)
        .unwrap_err()
        .starts_with("line 2: expected a block header"));
    let twice = "*\n x/a\nx/a .\n*\n x/a\nx/a .\n";
    assert_eq!(
        parse_expect(twice).unwrap_err(),
        "line 4: * is covered by an earlier block already"
    );
    let bad_cell = "UDP/81\n x/a\nx/a o\n";
    assert_eq!(
        parse_expect(bad_cell).unwrap_err(),
        "line 3: \"o\" is not a cell: use `.`, `X` or `-`"
    );
}
