//! Benchmark of FQDN egress (not a timed test): `cargo bench --bench dns` (root, dnsmasq).
//!
//! In one run, in a lab it builds:
//! - the latency a DNS query gains through the pod's DNS proxy: the same query, to the
//!   cluster DNS Service (dnsmasq in a DNS pod), from an injected pod and from a pod
//!   without palisade, in turn, medians and 99th percentiles;
//! - the first connection after a resolution: the time from the answer's arrival to the
//!   reply of a host outside the cluster at the address just learned, through the proxy,
//!   against the same from the pod without palisade;
//! - the DNS cache's memory with 10,000 names (one address each, and four each), counted
//!   by the allocator, and what learning and looking up cost.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use palisade::lab::{Lab, LabOptions};
use palisade_proxy::dns::cache::{DnsCache, Limits};

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const QUERIES: usize = 2000;
const CONNECTIONS: usize = 200;
const DNS_SERVICE: &str = "10.96.0.10:53";
const HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: dns, ports: [{containerPort: 53, protocol: UDP}, {containerPort: 53, protocol: TCP}]}]}
status: {podIP: 10.61.0.53}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {clusterIP: 10.96.0.10, selector: {k8s-app: kube-dns}, ports: [{name: dns, port: 53, protocol: UDP}, {name: tcp, port: 53, protocol: TCP}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}, annotations: {palisade.dev/inject: enabled}}
status: {podIP: 10.61.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: direct, namespace: bench, labels: {app: direct}}
status: {podIP: 10.61.1.20}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}], rules: {dns: [{matchPattern: "*"}]}}]
  - toFQDNs: [{matchPattern: "*.bench.test"}]
    toPorts: [{ports: [{port: "443"}]}]
---
apiVersion: lab.palisade.dev/v1
kind: LabHost
metadata: {name: host}
spec: {names: [api.bench.test], addresses: [203.0.113.80], ports: [443], ttl: 300}
"#;

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A UDP socket to the DNS Service (called inside a pod's namespace).
fn dns_socket() -> UdpSocket {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect(DNS_SERVICE).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket
}

/// RTTs of `QUERIES` sequential queries from inside `ns`.
fn query_rtts(lab: &Lab, pod: &str) -> Vec<Duration> {
    let ns = lab.netns(pod).unwrap();
    ns.run(|| {
        let socket = dns_socket();
        let mut buf = [0u8; 4096];
        let mut rtts = Vec::with_capacity(QUERIES);
        for i in 0..QUERIES + 100 {
            let q = query(i as u16, "api.bench.test.");
            let start = Instant::now();
            socket.send(&q).unwrap();
            loop {
                let n = socket.recv(&mut buf).expect("an answer");
                if buf[..n].starts_with(&(i as u16).to_be_bytes()) {
                    break;
                }
            }
            if i >= 100 {
                rtts.push(start.elapsed()); // the first 100 warm up
            }
        }
        rtts.sort();
        rtts
    })
    .unwrap()
}

/// From an answer's arrival to the host's reply on a new connection to the address the
/// answer gave, `CONNECTIONS` times, each time for a name not asked before by that pod.
fn first_connections(lab: &Lab, pod: &str) -> Vec<Duration> {
    let ns = lab.netns(pod).unwrap();
    ns.run(|| {
        let socket = dns_socket();
        let mut buf = [0u8; 4096];
        let mut out = Vec::with_capacity(CONNECTIONS);
        for i in 0..CONNECTIONS {
            socket.send(&query(i as u16, "api.bench.test.")).unwrap();
            let n = socket.recv(&mut buf).unwrap();
            let answered = Instant::now();
            let m = Message::from_vec(&buf[..n]).unwrap();
            let ip = m
                .answers
                .iter()
                .find_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .expect("an address");
            assert_eq!(ip, IpAddr::V4(HOST));
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::new(ip, 443), Duration::from_secs(2))
                    .expect("the host, through the proxy");
            s.write_all(b"hello\n").unwrap();
            let mut reply = [0u8; 16];
            let _ = s.read(&mut reply).unwrap();
            out.push(answered.elapsed());
        }
        out.sort();
        out
    })
    .unwrap()
}

fn cache_memory(addresses_per_name: u32) -> (f64, Duration, Duration) {
    let cache = DnsCache::new(Limits {
        max_names: 10_000,
        max_ips_per_name: 50,
        grace: Duration::from_secs(60),
    });
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("name-{i}.service.bench.test."))
        .collect();
    let ips: Vec<Vec<(IpAddr, u32)>> = (0..10_000u32)
        .map(|i| {
            (0..addresses_per_name)
                .map(|k| (IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 8 + k)), 300))
                .collect()
        })
        .collect();
    let now = Instant::now();
    let before = LIVE.load(Ordering::Relaxed);
    let start = Instant::now();
    for (name, ips) in names.iter().zip(&ips) {
        cache.learn(name, ips, now);
    }
    let learn = start.elapsed() / 10_000;
    let bytes = (LIVE.load(Ordering::Relaxed) - before) as f64;
    let start = Instant::now();
    let mut found = 0;
    for i in 0..10_000u32 {
        found += cache
            .names_for(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 8)), now)
            .len();
    }
    let lookup = start.elapsed() / 10_000;
    assert_eq!(found, 10_000);
    assert_eq!(cache.size().0, 10_000);
    (bytes, learn, lookup)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` must not build a lab.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for per_name in [1, 4] {
        let (bytes, learn, lookup) = cache_memory(per_name);
        println!(
            "cache, 10,000 names x {per_name} address(es): {:.2} MiB ({:.0} bytes per name); learn {:.2} us/name, lookup {:.2} us",
            bytes / (1024.0 * 1024.0),
            bytes / 10_000.0,
            micros(learn),
            micros(lookup)
        );
    }

    let dir = std::env::temp_dir().join(format!("palisade-dns-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bench.yaml"), MANIFESTS).unwrap();
    let lab = Lab::start(LabOptions {
        paths: vec![dir.clone()],
        respect_injection: true,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_palisade")),
        hold: Duration::from_secs(2),
        log_allowed: false,
        dns_grace: Duration::from_secs(60),
    })
    .expect("building the lab (root, dnsmasq)");

    // Interleaved rounds, so that drift of the machine falls on both alike.
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        direct.extend(query_rtts(&lab, "bench/direct"));
        proxied.extend(query_rtts(&lab, "bench/client"));
    }
    direct.sort();
    proxied.sort();
    let (d50, p50) = (percentile(&direct, 0.5), percentile(&proxied, 0.5));
    println!(
        "DNS query, {} each: direct p50 {:.0} us p99 {:.0} us; through the proxy p50 {:.0} us p99 {:.0} us; added p50 {:.0} us (target < 100 us)",
        direct.len(),
        micros(d50),
        micros(percentile(&direct, 0.99)),
        micros(p50),
        micros(percentile(&proxied, 0.99)),
        micros(p50.saturating_sub(d50))
    );

    let direct = first_connections(&lab, "bench/direct");
    let proxied = first_connections(&lab, "bench/client");
    let (d50, p50) = (percentile(&direct, 0.5), percentile(&proxied, 0.5));
    println!(
        "first connection after the answer, {CONNECTIONS} each: direct p50 {:.0} us; through the proxy p50 {:.0} us p99 {:.0} us (added {:.0} us)",
        micros(d50),
        micros(p50),
        micros(percentile(&proxied, 0.99)),
        micros(p50.saturating_sub(d50))
    );
    let refused = lab
        .flow_log("bench/client")
        .iter()
        .filter(|l| l["action"] == "deny")
        .count();
    assert_eq!(refused, 0, "no first connection was refused");
    drop(lab);
    let _ = std::fs::remove_dir_all(dir);
}
