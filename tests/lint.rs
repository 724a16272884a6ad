//! `palisade lint` on the examples users start from: the seeds' traps are found where they
//! are, the three-tier example is clean, SARIF is what code scanning reads, and the exit code
//! follows the worst severity. One test per check on a minimal manifest lives beside each
//! check in policy/src/lint/.

#[path = "../controller/tests/fakeapi/mod.rs"]
#[allow(dead_code)]
mod fakeapi;

use std::path::Path;
use std::process::Command;

use fakeapi::FakeApi;
use palisade_policy::document::{parse_stream, Node, Value as Yaml};
use palisade_policy::lint::Check;
use serde_json::{json, Value};

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

/// A manifest's value as JSON, as `kubectl apply` would send it.
fn to_json(node: &Node) -> Value {
    match &node.value {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => json!(b),
        Yaml::Int(i) => json!(i),
        Yaml::Float(f) => json!(f),
        Yaml::Str(s) => json!(s),
        Yaml::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// Every object of the manifests under `folder`, as an API server holding them would.
fn apply(api: &FakeApi, folder: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
    for file in palisade_controller::folder::manifest_files(&dir).unwrap() {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in parse_stream(&text) {
            if let Some(root) = doc.root.unwrap() {
                api.put(to_json(&root));
            }
        }
    }
}

/// Runs `palisade lint --cluster ARGS` against the test API server, as a user with a
/// kubeconfig would; gives the exit code, standard output and standard error.
async fn lint_cluster(api: &FakeApi, name: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("palisade-lint-{name}-{}", std::process::id()));
    let kubeconfig = api.kubeconfig(&dir);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["lint", "--cluster"])
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `lint --cluster` reads the seed's objects from the API and finds what `lint` finds in
/// its files, each naming the object and field instead of a file and line, in every format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lint_cluster_finds_in_the_api_what_lint_finds_in_the_files() {
    let api = FakeApi::start().await;
    apply(&api, "examples/seed-zero-trust-patterns");

    let (code, out, err) = lint_cluster(&api, "json", &["-o", "json"]).await;
    assert_eq!(code, Some(3), "errors give 3, as with the files: {err}");
    let from_api: Value = serde_json::from_str(&out).unwrap();
    let from_api = from_api["findings"].as_array().unwrap().clone();
    let mut from_files = findings("examples/seed-zero-trust-patterns");
    for f in &mut from_files {
        f["file"] = json!("");
        f["line"] = json!(0);
    }
    let key = |f: &Value| f.to_string();
    let (mut a, mut b) = (from_api.clone(), from_files);
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert!(!a.is_empty());
    assert_eq!(a, b, "the same findings, without files and lines");
    assert!(!err.contains(".yaml"), "the notices name no file: {err}");

    let (code, out, _) = lint_cluster(&api, "text", &[]).await;
    assert_eq!(code, Some(3));
    assert!(
        out.contains(
            "\nwarning[or-not-and] NetworkPolicy production/allow-dns spec.egress[0].to[1]\n"
        ) || out.starts_with("warning[or-not-and] NetworkPolicy production/allow-dns"),
        "{out}"
    );
    assert!(!out.contains(".yaml"), "no file in the text: {out}");

    let (code, out, _) = lint_cluster(&api, "sarif", &["-o", "sarif"]).await;
    assert_eq!(code, Some(3));
    let log: Value = serde_json::from_str(&out).unwrap();
    let results = log["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), from_api.len());
    for r in results {
        let location = &r["locations"][0];
        assert!(location["physicalLocation"].is_null(), "{location}");
        let logical = &location["logicalLocations"][0];
        assert_eq!(logical["kind"], "resource");
        assert!(
            logical["fullyQualifiedName"]
                .as_str()
                .unwrap()
                .starts_with(logical["name"].as_str().unwrap()),
            "{logical}"
        );
    }
    assert!(results.iter().any(
        |r| r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"]
            == "NetworkPolicy production/allow-dns spec.egress[0].to[1]"
    ));

    // An object the API holds but palisade cannot read is bad input, named by kind,
    // namespace, name and field.
    api.put(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "typo", "namespace": "production"},
        "spec": {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}}),
    );
    let (code, out, _) = lint_cluster(&api, "invalid", &["-o", "json"]).await;
    assert_eq!(code, Some(2), "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert!(
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "invalid-object"
                && f["object"] == "NetworkPolicy production/typo"
                && f["field"] == "spec.egress[0].to[0].ipBlock.cidr"
                && f["file"] == ""),
        "{out}"
    );
}

/// Without a reachable API server, `lint --cluster` says so and exits 2.
#[test]
fn lint_cluster_without_an_api_server_is_bad_input() {
    let dir = std::env::temp_dir().join(format!("palisade-lint-noapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: x, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: x, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["lint", "--cluster"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot list namespaces through the Kubernetes API"),
        "{err}"
    );
}
