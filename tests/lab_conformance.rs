//! Upstream-style conformance cases (tests/conformance/), probed for real: a lab per case,
//! every TCP and UDP flow (each pod's flows to itself included) through the kernel and the
//! proxies, compared with `simulate` flow by flow and with upstream's hand-written `.expect`
//! matrices. Twice: on the model as written, whose pods are dual-stack (every flow probed
//! over IPv4 and over IPv6), and on an IPv6-only copy of a representative subset (pods and
//! node with IPv6 addresses only). Needs root.

mod expect;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use expect::{Case, Cell, Expectation, Matrix, PortPair};
use palisade::lab::{Lab, LabOptions, Observed};
use palisade_policy::cluster::Family;

/// Cases covering each kind of rule: isolation, selectors, named ports, ranges, ipBlocks
/// (IPv4 and IPv6), protocols, policyTypes defaulting, both sides needed, the node.
const DUAL_STACK_CASES: &[&str] = &[
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

/// The IPv6-only run: one case of each kind (isolation both ways, selectors, ports by
/// number, name and range, protocols, ipBlocks of both families, the node), to keep the
/// added time small. An IPv4 ipBlock (041) matches nothing there: compared with simulate
/// only, as upstream's matrix is for IPv4.
const IPV6_ONLY_CASES: &[&str] = &[
    "002-default-deny-all",
    "010-pod-and-namespace-selector",
    "017-named-port-ingress",
    "032-egress-denied-client-side",
    "041-egress-ipblock-except",
    "047-udp-policy-not-tcp",
    "054-end-port-egress",
    "056-ipv6-egress-ipblock-except",
    "064-node-to-pod",
];

/// What one case's lab showed.
#[derive(Default)]
struct Outcome {
    /// Flows whose kernel verdict differs from simulate's, one line each.
    against_simulate: Vec<String>,
    /// Matrices that differ from upstream's, as expect::report prints them.
    against_upstream: String,
    /// Flows probed, per family.
    probed: BTreeMap<Family, usize>,
}

/// The kernel's matrices over `family`: one per probed port/protocol, each cell what the
/// probe saw.
fn kernel_matrices(
    pods: &[String],
    observed: &[Observed],
    family: Family,
) -> BTreeMap<PortPair, Matrix> {
    let index: HashMap<&str, usize> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let mut matrices = BTreeMap::new();
    for o in observed.iter().filter(|o| o.expected.family == family) {
        let Some(seen) = o.observed else { continue };
        let f = &o.expected;
        let pair = PortPair {
            protocol: f.protocol,
            port: f.port,
        };
        let cell = if seen { Cell::Allowed } else { Cell::Denied };
        matrices
            .entry(pair)
            .or_insert_with(|| Matrix::filled(pods.to_vec(), Cell::NotServed))
            .set(index[f.from.as_str()], index[f.to.as_str()], cell);
    }
    matrices
}

/// How a run lays its cases out.
struct Run<'a> {
    /// Its name in messages.
    name: &'a str,
    /// Whether every address must be IPv6.
    ipv6_only: bool,
}

/// Builds the lab of `case` from `paths`, probes it, and compares.
fn run(case: &Case, paths: Vec<PathBuf>, how: &Run<'_>) -> Outcome {
    let run_name = how.name;
    let lab = Lab::start(LabOptions {
        paths,
        respect_injection: false,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_palisade")),
        hold: Duration::from_secs(2),
        log_allowed: false,
        dns_grace: Duration::from_secs(60),
    })
    .unwrap_or_else(|e| panic!("{run_name}: building the lab for {}: {e:#}", case.name));
    assert!(
        lab.report().errors.is_empty(),
        "{run_name}: {}: {:?}",
        case.name,
        lab.report().errors
    );
    if how.ipv6_only {
        let v4: Vec<String> = lab
            .cluster()
            .pods
            .iter()
            .flat_map(|p| p.ips.iter().chain(&p.host_ips))
            .chain(lab.node_ips())
            .filter(|ip| ip.is_ipv4())
            .map(ToString::to_string)
            .collect();
        assert!(
            v4.is_empty(),
            "{}: IPv4 addresses in an IPv6-only lab: {v4:?}",
            case.name
        );
    }
    let observed = lab.probe_all().expect("probing");
    let mut outcome = Outcome::default();
    for o in &observed {
        if o.observed.is_some() {
            *outcome.probed.entry(o.expected.family).or_default() += 1;
        }
        if o.differs() {
            let f = &o.expected;
            outcome.against_simulate.push(format!(
                "{run_name}: {}: {} -> {} {}/{} over {}: simulate says {}, the kernel the opposite",
                case.name,
                f.from,
                f.to,
                f.port,
                f.protocol,
                f.family,
                if f.allowed { "allowed" } else { "denied" }
            ));
        }
    }

    let cluster = lab.cluster();
    let pods: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
    let expectation = Expectation::read(case, &pods).unwrap_or_else(|e| panic!("{e}"));
    for family in expect::families(case, cluster) {
        let matrices = kernel_matrices(&pods, &observed, family);
        // SCTP is not probed: only the pairs the lab probed are compared.
        let pairs: BTreeSet<PortPair> = matrices.keys().copied().collect();
        let has = |i: usize| cluster.pods[i].ip_of(family).is_some();
        let mismatches = expectation
            .compare(&pairs, &matrices, |i, j| has(i) && has(j))
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        if !mismatches.is_empty() {
            outcome.against_upstream += &expect::report(
                case,
                &format!("{run_name}, the kernel over {family}"),
                &mismatches,
            );
        }
    }
    outcome
}

/// Runs every case of `names` as `paths_of` lays it out; fails with every difference.
fn run_all(
    names: &[&str],
    how: &Run<'_>,
    paths_of: impl Fn(&Case) -> Vec<PathBuf>,
) -> BTreeMap<Family, usize> {
    let run_name = how.name;
    let mut against_simulate = Vec::new();
    let mut against_upstream = String::new();
    let mut probed: BTreeMap<Family, usize> = BTreeMap::new();
    for name in names {
        let case = Case::named(name);
        assert!(
            case.yaml_path.exists(),
            "no case {}",
            case.yaml_path.display()
        );
        let outcome = run(&case, paths_of(&case), how);
        against_simulate.extend(outcome.against_simulate);
        against_upstream += &outcome.against_upstream;
        for (family, n) in outcome.probed {
            *probed.entry(family).or_default() += n;
        }
    }
    assert!(
        against_simulate.is_empty() && against_upstream.is_empty(),
        "{run_name}: {} probed flows differ from simulate:\n{}\n\
         matrices that differ from upstream's:\n{against_upstream}",
        against_simulate.len(),
        against_simulate.join("\n")
    );
    probed
}

#[test]
fn conformance_cases_hold_through_real_proxies_over_both_families() {
    let dir = expect::conformance_dir();
    let how = Run {
        name: "dual-stack",
        ipv6_only: false,
    };
    let probed = run_all(DUAL_STACK_CASES, &how, |case| {
        vec![dir.join("model.yaml"), case.yaml_path.clone()]
    });
    // Each case: 9 pods, 4 TCP/UDP ports, to each other and to themselves, per family.
    for family in Family::ALL {
        let n = probed.get(&family).copied().unwrap_or(0);
        assert!(
            n >= DUAL_STACK_CASES.len() * 9 * 9 * 4,
            "{family}: only {n} flows probed"
        );
    }
}

/// An address of the model with its IPv6 twin: pod `10.1.n.p` is `fd00:1::n:p` (the
/// model gives both), the node 192.168.100.1 becomes `fd00:100::1`.
fn ipv6_twin(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => match v4.octets() {
            [10, 1, n, p] => Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, n.into(), p.into()),
            [192, 168, 100, 1] => Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1),
            _ => panic!("no IPv6 twin known for {v4}: add it to ipv6_twin"),
        },
    }
}

/// The addresses written on a line (quoted or not), in order.
fn addresses(line: &str) -> Vec<IpAddr> {
    line.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .filter_map(|word| word.trim_matches(':').parse().ok())
        .collect()
}

/// A manifest with every pod and node address IPv6 only: `podIP`, `podIPs` and `hostIP`
/// lines keep their IPv6 addresses, or get the IPv6 twins of their IPv4 ones.
fn ipv6_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let field = line.trim_start().split(':').next().unwrap_or_default();
        if !matches!(field, "podIP" | "podIPs" | "hostIP") {
            out += line;
            out.push('\n');
            continue;
        }
        let ips = addresses(line.split_once(':').map_or("", |(_, v)| v));
        let v6: Vec<Ipv6Addr> = if ips.iter().any(IpAddr::is_ipv6) {
            ips.iter()
                .filter_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(*v6),
                    IpAddr::V4(_) => None,
                })
                .collect()
        } else {
            ips.iter().map(|ip| ipv6_twin(*ip)).collect()
        };
        match field {
            "podIP" | "hostIP" => out += &format!("{indent}{field}: \"{}\"\n", v6[0]),
            _ => {
                let list: Vec<String> = v6.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
                out += &format!("{indent}podIPs: [{}]\n", list.join(", "));
            }
        }
    }
    out
}

#[test]
fn the_ipv6_only_copy_is_what_it_says() {
    let model = "  podIP: \"10.1.2.3\"\n  podIPs: [{ip: \"10.1.2.3\"}, {ip: \"fd00:1::2:3\"}]\n  hostIP: 192.168.100.1\n  labels: {pod: a}\n";
    assert_eq!(
        ipv6_only(model),
        "  podIP: \"fd00:1::2:3\"\n  podIPs: [{ip: \"fd00:1::2:3\"}]\n  hostIP: \"fd00:100::1\"\n  labels: {pod: a}\n"
    );
    // A host-network pod at the node's address, and an IPv6-primary pod.
    let other = "  podIP: 192.168.100.1\n  podIPs: [{ip: 192.168.100.1}]\n  podIPs: [{ip: \"fd00:1::1:1\"}, {ip: \"10.1.1.1\"}]\n";
    assert_eq!(
        ipv6_only(other),
        "  podIP: \"fd00:100::1\"\n  podIPs: [{ip: \"fd00:100::1\"}]\n  podIPs: [{ip: \"fd00:1::1:1\"}]\n"
    );
}

/// Writes the IPv6-only copy of the model and a case into `dir`.
fn ipv6_only_copy(case: &Case, dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("a folder for the IPv6-only copy");
    let mut paths = Vec::new();
    for source in [
        expect::conformance_dir().join("model.yaml"),
        case.yaml_path.clone(),
    ] {
        let text = std::fs::read_to_string(&source).expect("reading the case");
        let copy = dir.join(source.file_name().expect("a file name"));
        std::fs::write(&copy, ipv6_only(&text)).expect("writing the IPv6-only copy");
        paths.push(copy);
    }
    paths
}

/// Removes the copies when the test ends, passed or failed.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn conformance_cases_hold_through_real_proxies_on_an_ipv6_only_cluster() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("palisade-ipv6-only-{}", std::process::id())));
    let how = Run {
        name: "IPv6-only",
        ipv6_only: true,
    };
    let probed = run_all(IPV6_ONLY_CASES, &how, |case| {
        ipv6_only_copy(case, &dir.0.join(&case.name))
    });
    assert_eq!(
        probed.get(&Family::V4),
        None,
        "IPv4 flows probed: {probed:?}"
    );
    let v6 = probed.get(&Family::V6).copied().unwrap_or(0);
    assert!(
        v6 >= IPV6_ONLY_CASES.len() * 9 * 9 * 4,
        "only {v6} IPv6 flows probed"
    );
}
