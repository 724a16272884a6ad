//! Bad input gets a clear error naming file, line, object and field, and loses nothing:
//! every other object still loads, and the command exits 2 after printing everything.
//!
//! Each fixture in tests/bad-input/ holds one invalid object and a valid `deny-web` policy
//! that isolates `shop/web`; base.yaml holds the pods.

use std::process::Command;

use serde_json::Value;

const DIR: &str = "tests/bad-input";

/// Runs `simulate` on base.yaml and the fixture; returns stderr lines and the JSON output.
fn simulate(fixture: &str) -> (Vec<String>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["simulate", "-o", "json"])
        .arg(format!("{DIR}/base.yaml"))
        .arg(format!("{DIR}/{fixture}"))
        .output()
        .expect("run palisade");
    assert_eq!(out.status.code(), Some(2), "bad input exits 2: {out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let json = serde_json::from_slice(&out.stdout).expect("simulate still prints its JSON");
    (stderr.lines().map(str::to_owned).collect(), json)
}

/// The other objects loaded: `deny-web` isolates web, so client cannot reach it.
fn assert_rest_loaded(json: &Value) {
    let flow = json["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["from"] == "shop/client" && f["to"] == "shop/web")
        .expect("the flow client -> web:80");
    assert_eq!(flow["allowed"], false, "deny-web must still apply: {flow}");
    assert_eq!(flow["ingress"]["policies"][0], "shop/deny-web");
}

fn check(fixture: &str, expected: &[&str]) {
    let (lines, json) = simulate(fixture);
    let expected: Vec<String> = expected
        .iter()
        .map(|e| format!("{DIR}/{fixture}:{e}"))
        .collect();
    assert_eq!(lines, expected);
    assert_rest_loaded(&json);
}

#[test]
fn bad_cidr() {
    check(
        "bad-cidr.yaml",
        &[
            r#"9: NetworkPolicy shop/bad-cidr: spec.ingress[0].from[0].ipBlock.cidr: "10.0.0.0/33" is not a CIDR"#,
        ],
    );
}

#[test]
fn unknown_operator() {
    check(
        "unknown-operator.yaml",
        &[
            r#"11: NetworkPolicy shop/bad-operator: spec.ingress[0].from[0].podSelector.matchExpressions[0].operator: "Within" is not an operator: use In, NotIn, Exists or DoesNotExist"#,
        ],
    );
}

#[test]
fn ip_block_mixed_with_a_selector() {
    check(
        "ipblock-with-selector.yaml",
        &["8: NetworkPolicy shop/mixed-peer: spec.egress[0].to[0]: ipBlock cannot be combined with podSelector or namespaceSelector in one peer; write them as two peers"],
    );
}

#[test]
fn end_port_below_port() {
    check(
        "endport-below-port.yaml",
        &["10: NetworkPolicy shop/backwards-range: spec.ingress[0].ports[0].endPort: endPort 8000 is below port 8080"],
    );
}

#[test]
fn bad_regex() {
    check(
        "bad-regex.yaml",
        &[
            r#"13: PalisadePolicy shop/bad-path: spec.ingress[0].toPorts[0].rules.http[0].path: "/api/(v1" is not a regular expression or path template: unclosed group"#,
            r#"25: CiliumNetworkPolicy shop/huge-path: spec.ingress[0].toPorts[0].rules.http[0].path: "/(\\w{50}){50}" is not a regular expression or path template: compiles to more than 262144 bytes; simplify it"#,
            r#"28: CiliumNetworkPolicy shop/huge-path: spec.ingress[0].toPorts[0].rules.http[1].headerMatches[0].mismatch: mismatch is not supported by palisade (a mismatch always denies); remove it"#,
        ],
    );
}

#[test]
fn yaml_syntax_error_keeps_the_other_documents() {
    check(
        "yaml-syntax.yaml",
        &["6: not valid YAML: while parsing a flow mapping, did not find expected ',' or '}' (in the document that starts at line 1)"],
    );
}

#[test]
fn misspelt_field_is_an_error_not_a_silent_default() {
    check(
        "misspelt-field.yaml",
        &["5: NetworkPolicy shop/typo: spec.podselector: unknown field for a NetworkPolicy spec; known fields are podSelector, policyTypes, ingress, egress"],
    );
}

#[test]
fn unquoted_label_value() {
    check(
        "unquoted-label.yaml",
        &[
            r#"7: NetworkPolicy shop/metrics: spec.podSelector.matchLabels.metrics: must be a string, not a boolean: quote it, "true""#,
        ],
    );
}

#[test]
fn bad_protocol_and_ports_are_all_reported() {
    check(
        "bad-protocol-and-port.yaml",
        &[
            r#"8: NetworkPolicy shop/bad-ports: spec.ingress[0].ports[0].protocol: "ICMP" is not a protocol: use TCP, UDP or SCTP"#,
            r#"10: NetworkPolicy shop/bad-ports: spec.ingress[0].ports[1].port: "Web_Port" is neither a port number nor a port name (at most 15 lower-case letters, digits and '-', with at least one letter)"#,
            "11: NetworkPolicy shop/bad-ports: spec.ingress[0].ports[2].port: 70000 is not a port number (1 to 65535)",
        ],
    );
}

#[test]
fn unsupported_cilium_field_is_refused_not_ignored() {
    check(
        "unsupported-cilium-field.yaml",
        &["8: CiliumNetworkPolicy shop/to-services: spec.egress[0].toServices: toServices is not supported by palisade; remove it or express it with toEndpoints, toCIDR or toEntities"],
    );
}

#[test]
fn check_exits_2_on_an_unknown_pod() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "check",
            &format!("{DIR}/base.yaml"),
            "--from",
            "shop/nobody",
            "--to",
            "shop/web",
            "--port",
            "80",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no pod shop/nobody in the manifests; the pods are: shop/client, shop/web"),
        "{stderr}"
    );
}
