//! `palisade generate NAMESPACE PATH... --flows FILE`: the policies it proposes from observed
//! flows give, through `palisade simulate`, exactly the observed matrix. The flows come from
//! `simulate` and from a real lab (which needs root, like the other lab tests).

mod cli;

use std::collections::BTreeSet;

use cli::{flow_key, palisade, root, TempDir};
use serde_json::Value;

/// The allowed flows between two pods of a flows document, as `from -> to PROTO/port` (a
/// lab also reports each pod's flows to itself, always allowed, which `simulate` leaves out).
fn allowed(doc: &Value) -> BTreeSet<String> {
    doc["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter(|f| f["allowed"] == true && f["from"] != f["to"])
        .map(flow_key)
        .collect()
}

/// Generates `production`'s policies for the three-tier pods from `flows`, then simulates the
/// pods with them (and nothing else) and compares with the allowed flows of `flows`.
fn generate_and_simulate(dir: &TempDir, flows: &str) {
    let observed: Value = serde_json::from_str(&std::fs::read_to_string(flows).unwrap()).unwrap();
    let out = palisade(&[
        "generate",
        "production",
        "examples/three-tier/namespaces.yaml",
        "examples/three-tier/pods.yaml",
        "--flows",
        flows,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("every observed flow keeps its verdict"),
        "{stderr}"
    );
    let proposal = dir.path("generated.yaml");
    std::fs::write(&proposal, &out.stdout).unwrap();

    let sim = palisade(&[
        "simulate",
        "-o",
        "json",
        "examples/three-tier/namespaces.yaml",
        "examples/three-tier/pods.yaml",
        &proposal,
    ]);
    assert_eq!(
        sim.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    let simulated: Value = serde_json::from_slice(&sim.stdout).unwrap();
    assert!(!allowed(&observed).is_empty());
    assert_eq!(allowed(&simulated), allowed(&observed));
    // Least privilege: the generated policies leave the pods of production isolated, so
    // what was not observed stays denied.
    let denied = simulated["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["allowed"] == false)
        .count();
    assert!(denied > 0);
}

#[test]
fn policies_from_simulated_flows_reproduce_them() {
    let dir = TempDir::new("generate-sim");
    let sim = palisade(&["simulate", "-o", "json", "examples/three-tier"]);
    let flows = dir.path("flows.json");
    std::fs::write(&flows, &sim.stdout).unwrap();
    generate_and_simulate(&dir, &flows);
}

#[test]
fn policies_from_a_labs_observed_flows_reproduce_them() {
    let dir = TempDir::new("generate-lab");
    let lab = palisade(&["lab", "-o", "json", "examples/three-tier"]);
    assert_eq!(
        lab.status.code(),
        Some(0),
        "the lab (needs root): {}",
        String::from_utf8_lossy(&lab.stderr)
    );
    let flows = dir.path("observed.json");
    std::fs::write(&flows, &lab.stdout).unwrap();
    generate_and_simulate(&dir, &flows);
}

#[test]
fn replicas_observed_differently_are_reported() {
    let dir = TempDir::new("generate-replicas");
    // Two frontends with the same labels; only the first was seen calling the API.
    let pods = std::fs::read_to_string(root().join("examples/three-tier/pods.yaml")).unwrap()
        + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: frontend-2, namespace: production, labels: {app: frontend}}\n\
           spec: {containers: [{name: web, ports: [{containerPort: 80}]}]}\nstatus: {podIP: 10.10.1.21, hostIP: 192.168.56.11}\n";
    std::fs::write(dir.path("pods.yaml"), pods).unwrap();
    let flows = r#"{"flows": [
        {"from": "production/frontend", "to": "production/api", "port": 8080, "protocol": "TCP", "allowed": true},
        {"from": "production/frontend-2", "to": "production/api", "port": 8080, "protocol": "TCP", "allowed": false}
    ]}"#;
    std::fs::write(dir.path("flows.json"), flows).unwrap();
    let out = palisade(&[
        "generate",
        "production",
        "examples/three-tier/namespaces.yaml",
        &dir.path("pods.yaml"),
        "--flows",
        &dir.path("flows.json"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "allowed, though not observed:\n  production/frontend-2 -> production/api 8080/TCP\n"
        ),
        "{stderr}"
    );
}

#[test]
fn a_file_that_is_not_flows_is_bad_input() {
    let out = palisade(&[
        "generate",
        "production",
        "examples/three-tier",
        "--flows",
        "examples/three-tier/pods.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a flows file"));
}
