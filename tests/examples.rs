//! The folders under `examples/` are what users start from, so they must load cleanly,
//! every policy in them must select a pod, and the matrices their READMEs describe must
//! be the ones `palisade simulate` computes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_policy::cluster::Cluster;
use palisade_policy::compile::Compiler;
use palisade_policy::manifest::{load_str, Report};
use palisade_policy::policy::PolicyId;
use palisade_policy::simulate::{simulate, SimFlow, Simulation};

/// The `examples/` folder of the repository.
fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every example: the folders directly under `examples/`, sorted.
fn example_folders() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ is readable")
        .map(|e| e.expect("examples/ entry is readable").path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// The manifests of a folder, found the way the CLI and the controller find them.
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    palisade_controller::folder::manifest_files(dir).expect("example folder is readable")
}

/// An example folder, loaded.
struct Example {
    cluster: Cluster,
    report: Report,
    /// Namespaces declared by a Namespace object (the rest are only implied).
    declared_namespaces: BTreeSet<String>,
    /// Pods whose manifest gives no `status.podIP` (the loader made one up).
    pods_without_ip: Vec<String>,
}

fn load(dir: &Path) -> Example {
    let mut cluster = Cluster::default();
    let mut report = Report::default();
    for file in manifest_files(dir) {
        let text = std::fs::read_to_string(&file).expect("manifest is readable");
        load_str(
            &mut cluster,
            &file.display().to_string(),
            &text,
            &mut report,
        );
    }
    // Before `finish`, the only namespaces are the ones a manifest declared.
    let declared_namespaces = cluster.namespaces.keys().cloned().collect();
    cluster.finish();
    let pods_without_ip = cluster
        .pods
        .iter()
        .filter(|p| p.ips.is_empty())
        .map(|p| p.key())
        .collect();
    cluster.assign_missing_ips();
    Example {
        cluster,
        report,
        declared_namespaces,
        pods_without_ip,
    }
}

fn load_example(name: &str) -> Example {
    let ex = load(&examples_dir().join(name));
    assert!(
        ex.report.errors.is_empty(),
        "examples/{name} has errors:\n{}",
        lines(&ex.report.errors)
    );
    ex
}

fn lines<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| format!("  {i}\n")).collect()
}

/// A flow as the tests name it: `from -> to PROTO/port`.
fn key(f: &SimFlow) -> String {
    format!("{} -> {} {}/{}", f.from, f.to, f.protocol.as_str(), f.port)
}

fn allowed_flows(sim: &Simulation) -> BTreeSet<String> {
    sim.flows.iter().filter(|f| f.allowed).map(key).collect()
}

/// Fails with the flows that differ, both ways, when the allowed set is not `expected`.
fn assert_allowed_exactly(example: &str, sim: &Simulation, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let actual = allowed_flows(sim);
    let missing: Vec<_> = expected.difference(&actual).collect();
    let unexpected: Vec<_> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "examples/{example}: the allowed flows differ from the expected ones\n\
         expected allowed, but denied:\n{}allowed, but not expected:\n{}",
        lines(missing),
        lines(unexpected)
    );
}

/// The one flow `from -> to PROTO/port`; fails if the simulation has no such flow.
fn flow<'s>(sim: &'s Simulation, from: &str, to: &str, port: &str) -> &'s SimFlow {
    let wanted = format!("{from} -> {to} {port}");
    sim.flows
        .iter()
        .find(|f| key(f) == wanted)
        .unwrap_or_else(|| panic!("no flow {wanted} in the simulation"))
}

#[test]
fn every_example_loads_cleanly_and_every_policy_selects_a_pod() {
    let folders = example_folders();
    assert!(
        !folders.is_empty(),
        "no example folders under {}",
        examples_dir().display()
    );
    for dir in folders {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            dir.join("README.md").is_file(),
            "examples/{name} has no README.md"
        );
        assert!(
            !manifest_files(&dir).is_empty(),
            "examples/{name} has no manifests"
        );
        let ex = load_example(&name);
        let cluster = &ex.cluster;
        assert!(!cluster.pods.is_empty(), "examples/{name} has no pods");
        assert!(
            !cluster.policies.is_empty(),
            "examples/{name} has no policies"
        );

        // Every namespace that pods and policies live in is declared, with its labels.
        let implied: Vec<_> = cluster
            .namespaces
            .keys()
            .filter(|n| !ex.declared_namespaces.contains(*n))
            .collect();
        assert!(
            implied.is_empty(),
            "examples/{name}: no Namespace object for {implied:?}"
        );

        // Every pod has its addresses, so that ipBlock rules meet realistic ones.
        assert!(
            ex.pods_without_ip.is_empty(),
            "examples/{name}: no status.podIP on {:?}",
            ex.pods_without_ip
        );
        for pod in &cluster.pods {
            assert!(
                !pod.host_ips.is_empty(),
                "examples/{name}: pod {} has no status.hostIP",
                pod.key()
            );
        }

        let compiler = Compiler::new(cluster);
        let mut selecting: BTreeSet<PolicyId> = BTreeSet::new();
        for pod in &cluster.pods {
            let policy = compiler.compile(pod);
            for side in [&policy.ingress, &policy.egress] {
                selecting.extend(side.policies.iter().map(|p| p.id.clone()));
            }
        }
        let idle: Vec<String> = cluster
            .policies
            .iter()
            .filter(|p| !selecting.contains(&p.id))
            .map(|p| format!("{} {}", p.id.kind.as_str(), p.id))
            .collect();
        assert!(
            idle.is_empty(),
            "examples/{name}: policies that select no pod:\n{}",
            lines(idle)
        );
    }
}

#[test]
fn three_tier_allows_exactly_the_request_path_and_dns() {
    let ex = load_example("three-tier");
    let sim = simulate(&ex.cluster);
    // Five pods; each is judged from the four others on each port it declares:
    // controller 80 and 443, coredns 53/UDP and 53/TCP, frontend, api, postgres one each.
    assert_eq!(
        sim.flows.len(),
        4 * 7,
        "every pod pair on every declared port is judged"
    );
    assert_allowed_exactly(
        "three-tier",
        &sim,
        &[
            // The request path, one hop at a time.
            "ingress-nginx/controller -> production/frontend TCP/80",
            "production/frontend -> production/api TCP/8080",
            "production/api -> production/postgres TCP/5432",
            // DNS, UDP and TCP, for every production pod.
            "production/frontend -> kube-system/coredns UDP/53",
            "production/frontend -> kube-system/coredns TCP/53",
            "production/api -> kube-system/coredns UDP/53",
            "production/api -> kube-system/coredns TCP/53",
            "production/postgres -> kube-system/coredns UDP/53",
            "production/postgres -> kube-system/coredns TCP/53",
            // Outside production no policy selects anything: the controller and DNS reach
            // each other on every port, and nothing else lets them into production.
            "ingress-nginx/controller -> kube-system/coredns UDP/53",
            "ingress-nginx/controller -> kube-system/coredns TCP/53",
            "kube-system/coredns -> ingress-nginx/controller TCP/80",
            "kube-system/coredns -> ingress-nginx/controller TCP/443",
        ],
    );
}

#[test]
fn seed_recipe_three_tier_matches_the_seeds_diagram() {
    let ex = load_example("seed-recipe");
    let sim = simulate(&ex.cluster);
    let allowed = |from: &str, to: &str, port: &str| flow(&sim, from, to, port).allowed;
    // The arrows of seed 004's diagram.
    assert!(allowed(
        "ingress-nginx/controller",
        "production/frontend",
        "TCP/8080"
    ));
    assert!(allowed("production/frontend", "production/api", "TCP/8080"));
    assert!(allowed("production/api", "production/database", "TCP/5432"));
    // Its two crossed-out arrows.
    assert!(!allowed(
        "production/frontend",
        "production/database",
        "TCP/5432"
    ));
    assert!(!allowed(
        "ingress-nginx/controller",
        "production/database",
        "TCP/5432"
    ));
    // The ingress controller stops at the frontend.
    assert!(!allowed(
        "ingress-nginx/controller",
        "production/api",
        "TCP/8080"
    ));
    // allow-frontend-to-api's second peer ANDs purpose=monitoring with app=prometheus.
    assert!(allowed(
        "monitoring/prometheus",
        "production/api",
        "TCP/8080"
    ));
    assert!(!allowed(
        "monitoring/prometheus",
        "production/frontend",
        "TCP/8080"
    ));
    // The database's "no egress" still leaves it the DNS that allow-dns gives every pod.
    assert!(allowed(
        "production/database",
        "kube-system/coredns",
        "UDP/53"
    ));
    assert!(!allowed(
        "production/database",
        "production/api",
        "TCP/8080"
    ));
}

#[test]
fn seed_zero_trust_three_tier_blocks_its_own_request_path() {
    let ex = load_example("seed-zero-trust");
    let sim = simulate(&ex.cluster);

    // Seed 000 promises "backend only accepts traffic from frontend", and the backend's
    // ingress does accept it. But its default-deny lists Egress too, and no policy gives
    // the frontend an egress rule towards the backend, so the frontend's own side refuses
    // the connection. Surprising to the seed's readers, and what Kubernetes does.
    let f = flow(
        &sim,
        "production/frontend",
        "production/backend",
        "TCP/8080",
    );
    assert!(!f.allowed, "frontend must not reach backend: {f:?}");
    assert!(
        !f.egress.allowed && f.egress.isolated,
        "the frontend's egress refuses it: {f:?}"
    );
    assert!(
        f.ingress.allowed,
        "the backend's ingress would accept it: {f:?}"
    );

    // The same holds one hop further: the backend's egress names only 443 and DNS.
    let f = flow(
        &sim,
        "production/backend",
        "production/postgres",
        "TCP/5432",
    );
    assert!(
        !f.allowed && !f.egress.allowed && f.ingress.allowed,
        "{f:?}"
    );

    // What does work: the ingress controller (outside production) reaches the frontend.
    assert!(
        flow(
            &sim,
            "ingress-nginx/controller",
            "production/frontend",
            "TCP/80"
        )
        .allowed
    );
    // The "external HTTPS" rule is an ipBlock, and ipBlocks match pods too.
    assert!(
        flow(
            &sim,
            "production/backend",
            "ingress-nginx/controller",
            "TCP/443"
        )
        .allowed
    );
    // DNS is UDP only.
    assert!(flow(&sim, "production/frontend", "kube-system/coredns", "UDP/53").allowed);
    assert!(!flow(&sim, "production/frontend", "kube-system/coredns", "TCP/53").allowed);
}

/// What each seed folder's README says about its matrix, flow by flow.
#[test]
fn seed_readmes_describe_their_matrices() {
    // (example, from, to, port, allowed)
    #[rustfmt::skip]
    let claims: &[(&str, &str, &str, &str, bool)] = &[
        // Pattern 2 is only the server's half: the frontend's egress is closed.
        ("seed-zero-trust-patterns", "production/frontend", "production/backend", "TCP/8080", false),
        // Pattern 3: the monitoring namespace scrapes 9090.
        ("seed-zero-trust-patterns", "monitoring/prometheus", "production/backend", "TCP/9090", true),
        ("seed-zero-trust-patterns", "kube-system/coredns", "production/backend", "TCP/9090", false),
        // The health-check rule's 10.0.0.0/8 also admits pods.
        ("seed-zero-trust-patterns", "kube-system/coredns", "production/backend", "TCP/8080", true),
        // Pattern 4's first two rules have no ports: any pod, any port.
        ("seed-zero-trust-patterns", "production/backend", "monitoring/prometheus", "TCP/9090", true),
        ("seed-zero-trust-patterns", "production/backend", "kube-system/coredns", "TCP/53", true),
        // Pattern 5 is UDP only.
        ("seed-zero-trust-patterns", "production/frontend", "kube-system/coredns", "UDP/53", true),
        ("seed-zero-trust-patterns", "production/frontend", "kube-system/coredns", "TCP/53", false),
        ("seed-zero-trust-patterns", "default/web", "kube-system/coredns", "UDP/53", false),
        // seed-intro: the two egress examples close my-namespace's ingress and egress.
        ("seed-intro", "my-namespace/frontend", "my-namespace/backend", "TCP/8080", false),
        ("seed-intro", "frontend/web", "my-namespace/frontend", "TCP/80", false),
        ("seed-intro", "my-namespace/backend", "external-services/gateway", "TCP/443", true),
        ("seed-intro", "my-namespace/frontend", "external-services/gateway", "TCP/443", false),
        ("seed-intro", "my-namespace/frontend", "kube-system/coredns", "TCP/53", true),
        ("seed-intro", "my-namespace/frontend", "kube-system/coredns", "UDP/53", false),
        ("seed-intro", "frontend/web", "backend/api", "TCP/8080", true),
        ("seed-intro", "my-app/tools", "backend/api", "TCP/8080", false),
        ("seed-intro", "my-app/my-app-1", "my-app/my-app-2", "TCP/8080", true),
        ("seed-intro", "my-app/tools", "my-app/my-app-1", "TCP/8080", false),
        ("seed-intro", "my-app/my-app-1", "my-app/tools", "TCP/8080", true),
        ("seed-intro", "default/web", "kube-system/coredns", "UDP/53", false),
        // seed-isolation: default-deny-all closed the frontend's egress.
        ("seed-isolation", "default/frontend", "default/backend", "TCP/8080", false),
        ("seed-isolation", "monitoring/prometheus", "default/backend", "TCP/8080", true),
        ("seed-isolation", "default/frontend", "kube-system/coredns", "TCP/53", true),
        // OR: demo's frontend, or anything in monitoring.
        ("seed-isolation", "demo/frontend", "demo/reports", "TCP/8080", true),
        ("seed-isolation", "monitoring/prometheus", "demo/reports", "TCP/8080", true),
        ("seed-isolation", "monitoring/frontend", "demo/reports", "TCP/8080", true),
        ("seed-isolation", "demo/billing", "demo/reports", "TCP/8080", false),
        // AND: only a frontend inside monitoring.
        ("seed-isolation", "monitoring/frontend", "demo/billing", "TCP/8080", true),
        ("seed-isolation", "demo/frontend", "demo/billing", "TCP/8080", false),
        ("seed-isolation", "monitoring/prometheus", "demo/billing", "TCP/8080", false),
        // seed-patterns: the three tiers work, hop by hop.
        ("seed-patterns", "ingress-nginx/controller", "production/frontend", "TCP/80", true),
        ("seed-patterns", "production/frontend", "production/api", "TCP/8080", true),
        ("seed-patterns", "production/api", "production/postgres", "TCP/5432", true),
        ("seed-patterns", "production/frontend", "production/postgres", "TCP/5432", false),
        // Prometheus scrapes every production pod on 9090 and 8080, PCI ones included.
        ("seed-patterns", "monitoring/prometheus", "production/api", "TCP/9090", true),
        ("seed-patterns", "monitoring/prometheus", "production/payment-service", "TCP/9090", true),
        ("seed-patterns", "monitoring/prometheus", "production/payment-service", "TCP/8443", false),
        // The PCI zone talks only to itself.
        ("seed-patterns", "production/payment-service", "production/card-vault", "TCP/8200", true),
        ("seed-patterns", "production/api", "production/card-vault", "TCP/8200", false),
        ("seed-patterns", "production/card-vault", "production/api", "TCP/8080", false),
        // team-a is closed, DNS included.
        ("seed-patterns", "team-a/orders", "team-a/worker", "TCP/8080", true),
        ("seed-patterns", "team-a/orders", "kube-system/coredns", "UDP/53", false),
        ("seed-patterns", "production/api", "team-a/orders", "TCP/8080", false),
        // netpol-test: the server stops accepting.
        ("seed-patterns", "netpol-test/client", "netpol-test/server", "TCP/80", false),
        // The CI runner reaches no pod but DNS: its toFQDNs rule needs names.
        ("seed-patterns", "production/ci-runner", "kube-system/coredns", "UDP/53", true),
        ("seed-patterns", "production/ci-runner", "ingress-nginx/controller", "TCP/443", false),
    ];
    let mut failures = Vec::new();
    let mut current: Option<(&str, Simulation)> = None;
    for &(example, from, to, port, expected) in claims {
        if current.as_ref().is_none_or(|(name, _)| *name != example) {
            current = Some((example, simulate(&load_example(example).cluster)));
        }
        let sim = &current.as_ref().unwrap().1;
        let f = flow(sim, from, to, port);
        if f.allowed != expected {
            failures.push(format!(
                "examples/{example}: {} is {}, the README says {}",
                key(f),
                if f.allowed { "allowed" } else { "denied" },
                if expected { "allowed" } else { "denied" }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "README claims that do not hold:\n{}",
        lines(failures)
    );
}

#[test]
fn cli_simulate_prints_the_three_tier_matrix_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["simulate", "examples/three-tier", "-o", "json"])
        .output()
        .expect("palisade runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "palisade simulate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let flows = doc["flows"].as_array().expect("a `flows` array");
    assert!(!flows.is_empty());

    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
    let flow_keys = set(&[
        "from", "to", "port", "protocol", "family", "allowed", "egress", "ingress",
    ]);
    let side_keys = set(&["allowed", "isolated", "policies"]);
    for f in flows {
        assert_eq!(keys(f), flow_keys, "{f}");
        assert_eq!(f["family"], "IPv4", "an IPv4 cluster: {f}");
        assert_eq!(keys(&f["egress"]), side_keys, "{f}");
        assert_eq!(keys(&f["ingress"]), side_keys, "{f}");
    }

    // The binary agrees with the library.
    let from_json: BTreeSet<String> = flows
        .iter()
        .filter(|f| f["allowed"] == true)
        .map(|f| {
            format!(
                "{} -> {} {}/{}",
                f["from"].as_str().unwrap(),
                f["to"].as_str().unwrap(),
                f["protocol"].as_str().unwrap(),
                f["port"]
            )
        })
        .collect();
    assert_eq!(
        from_json,
        allowed_flows(&simulate(&load_example("three-tier").cluster))
    );
}
