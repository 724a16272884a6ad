//! Upstream-style conformance cases (tests/conformance/), probed for real: a lab per case,
//! every TCP and UDP flow through the kernel and the proxies, compared with `simulate`
//! (which tests/conformance.rs compares with the upstream expectations). Needs root.

use std::path::PathBuf;
use std::time::Duration;

use palisade::lab::{Lab, LabOptions};

/// Cases covering each kind of rule: isolation, selectors, named ports, ranges, ipBlocks
/// (IPv4 and IPv6), protocols, policyTypes defaulting, both sides needed, the node.
const CASES: &[&str] = &[
    "001-default-deny-ingress",
    "002-default-deny-all",
    "003-allow-from-pod-same-namespace",
    "006-namespace-selector",
    "009-pod-or-namespace-selector",
    "010-pod-and-namespace-selector",
    "011-multiple-pod-and-namespace-selectors",
    "014-ports",
    "017-named-port-ingress",
    "019-named-port-egress",
    "030-default-deny-egress",
    "032-egress-denied-client-side",
    "033-egress-pod-and-namespace-selector",
    "034-protocol-without-port",
    "041-egress-ipblock-except",
    "047-udp-policy-not-tcp",
    "052-named-port-protocol-mismatch",
    "053-end-port-ingress",
    "054-end-port-egress",
    "055-ipv6-egress-ipblock",
    "057-ingress-ipblock-except-pod-ips",
    "059-namespace-selector-does-not-exist",
    "060-policy-types-omitted-empty-egress",
    "064-node-to-pod",
];

#[test]
fn conformance_cases_hold_through_real_proxies() {
    let dir = PathBuf::from("tests/conformance");
    let mut failures = Vec::new();
    let mut probed = 0;
    for case in CASES {
        let file = dir.join("cases").join(format!("{case}.yaml"));
        assert!(file.exists(), "no case {}", file.display());
        let lab = Lab::start(LabOptions {
            paths: vec![dir.join("model.yaml"), file],
            respect_injection: false,
            binary: PathBuf::from(env!("CARGO_BIN_EXE_palisade")),
            hold: Duration::from_secs(2),
        })
        .unwrap_or_else(|e| panic!("building the lab for {case}: {e:#}"));
        assert!(
            lab.report().errors.is_empty(),
            "{case}: {:?}",
            lab.report().errors
        );
        let observed = lab.probe_all().expect("probing");
        probed += observed.iter().filter(|o| o.observed.is_some()).count();
        for o in observed.iter().filter(|o| o.differs()) {
            let f = &o.expected;
            failures.push(format!(
                "{case}: {} -> {} {}/{} expected {}, observed the opposite",
                f.from,
                f.to,
                f.port,
                f.protocol,
                if f.allowed { "allowed" } else { "denied" }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {probed} probed flows differ from simulate:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        probed > 20 * 288,
        "every case probes its TCP and UDP flows: {probed}"
    );
}
