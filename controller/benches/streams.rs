//! Scale benchmark of the controller and its streams, in one process: the 10,000-pod
//! cluster of `policy/benches/compile.rs` (100 namespaces, 1,000 NetworkPolicies) with one
//! Service per app of each namespace, compiled by the controller's compile loop and served
//! over TLS to 1,000 real proxy stream clients (`palisade_proxy::client`), each holding its
//! pod's policy as a proxy does.
//!
//! It reports:
//! - bytes per pod: the stream's first message (a resync) against the pod's compiled policy
//!   as JSON, the form the stream had before (the baseline, measured in the same run);
//! - for single changes (a pod's labels, a policy edit): the time from the change to the
//!   last affected proxy holding exactly its new policy (p50, p99, max), how many proxies
//!   each change affected, and the bytes sent per change;
//! - the process's memory with the controller alone and with the 1,000 streams;
//! - CPU of the controller's threads (compile loop and stream server) during a churn of 50
//!   pod changes per second.
//!
//! Run: `cargo bench -p palisade-controller --bench streams` (options after `--`:
//! `--streams N`, `--changes N`, `--churn-seconds N`). Targets: p99 under 1 s, memory
//! under 200 MB.

#[path = "../tests/client/mod.rs"]
mod client;
#[path = "../../policy/benches/generated/mod.rs"]
mod generated;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_controller::auth::{Authenticator, StaticTokens};
use palisade_controller::server::{self, Streams};
use palisade_controller::source::{self, Event};
use palisade_controller::store::Store;
use palisade_policy::cluster::{Cluster, Pod};
use palisade_policy::compile::Compiler;
use palisade_policy::compiled::PodPolicy;
use palisade_policy::manifest::Object;
use palisade_policy::policy::Policy;
use palisade_policy::ports::{PortRef, PortSpec, Protocol};
use palisade_policy::wire::{self, Sent};
use palisade_proxy::state::PolicyState;

struct Options {
    streams: usize,
    changes: usize,
    churn_seconds: u64,
}

fn options() -> Options {
    let mut o = Options {
        streams: 1000,
        changes: 100,
        churn_seconds: 20,
    };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let n = || pair[1].parse().expect("a number");
        match pair[0].as_str() {
            "--streams" => o.streams = n() as usize,
            "--changes" => o.changes = n() as usize,
            "--churn-seconds" => o.churn_seconds = n(),
            _ => {}
        }
    }
    o
}

/// Resident memory of the process, in MB.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds of the process's threads whose name starts with one of `prefixes`.
fn cpu_seconds(prefixes: &[&str]) -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let t: f64 =
            fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
        total += t / ticks;
    }
    total
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a live local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn stream_bytes(handle: &metrics_exporter_prometheus::PrometheusHandle) -> f64 {
    handle
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("palisade_controller_stream_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The first message of every pod's stream against its policy as JSON.
fn sizes(cluster: &Cluster) {
    let compiler = Compiler::new(cluster);
    let services: Vec<_> = compiler
        .service_entries()
        .iter()
        .map(|(k, e)| wire::service(k, Some(e)))
        .collect();
    let services_only = wire::encode(&wire::Update {
        services: services.clone(),
        ..wire::Update::default()
    })
    .len();
    let resync = |pod: &Pod| {
        let body = Arc::new(compiler.body(pod));
        let update = Sent::default()
            .next(
                1,
                &body,
                |id| compiler.set(id).cloned(),
                |id| compiler.map(id).cloned(),
                services.clone(),
            )
            .expect("a first message");
        wire::encode(&update).len()
    };
    let json = |pod: &Pod| serde_json::to_vec(&compiler.compile(pod)).map_or(0, |v| v.len());
    let typical = generated::typical_pod(cluster);
    let (tj, tw) = (json(typical), resync(typical));
    println!(
        "bytes per pod, typical pod {} ({} Services in the cluster):",
        typical.key(),
        services.len()
    );
    println!(
        "  JSON of the compiled policy (the stream before): {tj} B; first stream message: {tw} B \
         ({:.1}x smaller), of which the Service table {services_only} B",
        tj as f64 / tw as f64
    );
    let mut j: Vec<usize> = cluster.pods.iter().step_by(10).map(json).collect();
    let mut w: Vec<usize> = cluster.pods.iter().step_by(10).map(resync).collect();
    j.sort_unstable();
    w.sort_unstable();
    println!(
        "  over {} pods: JSON median {} B, max {} B; first message median {} B, max {} B",
        j.len(),
        j[j.len() / 2],
        j[j.len() - 1],
        w[w.len() / 2],
        w[w.len() - 1]
    );
}

/// A change the benchmark makes, and the object it changes.
enum Change {
    Labels(Pod),
    Policy(Policy),
}

fn relabel(rng: &mut generated::Rng, cluster: &Cluster, current: &BTreeMap<String, Pod>) -> Change {
    let mut pod = loop {
        let p = &cluster.pods[rng.below(cluster.pods.len() as u64) as usize];
        if p.labels.contains_key("tier") {
            break current[&p.key()].clone();
        }
    };
    let tiers = ["web", "api", "db"];
    let now = pod.labels.get("tier").cloned().unwrap_or_default();
    let next = tiers[(tiers.iter().position(|t| *t == now).unwrap_or(0) + 1) % 3];
    pod.labels.insert("tier".into(), next.into());
    Change::Labels(pod)
}

fn edit_policy(
    rng: &mut generated::Rng,
    cluster: &Cluster,
    current: &BTreeMap<String, Policy>,
) -> Change {
    let ns = &cluster.policies[rng.below(cluster.policies.len() as u64) as usize]
        .id
        .namespace;
    let key = format!("{ns}/web-from-namespace");
    let mut p = current[&key].clone();
    if let Some(rule) = p.ingress.as_mut().and_then(|r| r.first_mut()) {
        let port = match rule.ports[0].spec.port {
            Some(PortRef::Number(80)) => 8080,
            _ => 80,
        };
        rule.ports[0].spec = PortSpec {
            protocol: Some(Protocol::Tcp),
            port: Some(PortRef::Number(port)),
            end_port: None,
        };
    }
    Change::Policy(p)
}

/// A policy's fingerprint, the same in every process. The Service table, shared by every
/// pod and large, is hashed once per table (`services` remembers the last one).
fn fingerprint(policy: &PodPolicy, services: &mut (usize, u64)) -> u64 {
    use std::hash::{Hash, Hasher};
    let hash = |bytes: Vec<u8>| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    };
    let table = Arc::as_ptr(&policy.services) as usize;
    if services.0 != table {
        *services = (
            table,
            hash(serde_json::to_vec(&*policy.services).expect("a table serializes")),
        );
    }
    let rest = PodPolicy {
        services: Arc::default(),
        ..policy.clone()
    };
    hash(serde_json::to_vec(&rest).expect("a policy serializes")) ^ services.1
}

/// The pods whose proxies the benchmark runs: `streams` of them, spread over the cluster.
fn watched(cluster: &Cluster, streams: usize) -> Vec<&Pod> {
    cluster
        .pods
        .iter()
        .step_by((cluster.pods.len() / streams).max(1))
        .take(streams)
        .collect()
}

/// The proxies' side, in a process of its own so that the controller's memory and CPU are
/// measured alone: one stream client per watched pod; prints `index fingerprint` whenever
/// a proxy's policy changes.
fn proxies_child(addr: &str, dir: &Path, streams: usize) {
    use std::io::Write;
    raise_fd_limit();
    let cluster = generated::with_services(generated::cluster());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr: SocketAddr = addr.parse().expect("an address");
    let (tx, rx) = std::sync::mpsc::channel::<(usize, u64)>();
    for (i, pod) in watched(&cluster, streams).into_iter().enumerate() {
        let state = PolicyState::default();
        let config = client::config(
            &pod.key(),
            pod.ips.clone(),
            &[addr],
            &dir.join("ca.pem"),
            &dir.join("tokens").join(i.to_string()),
        );
        // Subscribed before the client starts, so that no policy goes unseen.
        let mut changes = state.subscribe();
        runtime.spawn(palisade_proxy::client::run(Arc::new(config), state));
        let tx = tx.clone();
        runtime.spawn(async move {
            let mut services = (0, 0);
            loop {
                let current = changes.borrow_and_update().clone();
                if let Some(s) = current {
                    if tx.send((i, fingerprint(&s.policy, &mut services))).is_err() {
                        return;
                    }
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    for (i, f) in rx {
        if writeln!(out, "{i} {f}").and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--proxies-child") {
        proxies_child(
            &args[at + 1],
            Path::new(&args[at + 2]),
            args[at + 3].parse().unwrap(),
        );
        return;
    }
    let o = options();
    raise_fd_limit();
    let handle = palisade_controller::metrics::install().expect("the metrics recorder");
    let cluster = generated::with_services(generated::cluster());
    println!(
        "cluster: {} pods, {} namespaces, {} policies, {} Services; {} streams",
        cluster.pods.len(),
        cluster.namespaces.len(),
        cluster.policies.len(),
        cluster.services.len(),
        o.streams
    );
    sizes(&cluster);
    // What the benchmark itself holds (the cluster, a reference compiler to know what every
    // proxy must end with) is there before the controller starts.
    let reference = Compiler::new(&cluster);
    let rss_start = rss_mb();

    let controller = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("controller")
        .enable_all()
        .build()
        .unwrap();

    // The controller: compile loop, then every object, then the stream server.
    let store = Arc::new(Store::default());
    let events = source::start(store.clone()).unwrap();
    let started = Instant::now();
    let objects = cluster.objects();
    controller.block_on(async {
        for (_, o) in objects.clone() {
            events.send(Event::Apply(o)).await.unwrap();
        }
        events.send(Event::Synced).await.unwrap();
        while !store.ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    println!(
        "controller: every pod compiled and published in {:?}; its memory {:.0} MB (process RSS {:.0} MB, of which {:.0} MB the benchmark's own cluster and reference compiler)",
        started.elapsed(),
        rss_mb() - rss_start,
        rss_mb(),
        rss_start
    );

    let dir = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let generated_tls = palisade_controller::tls::generate(vec!["127.0.0.1".into()]).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &generated_tls.ca).unwrap();
    std::fs::write(dir.join("cert.pem"), &generated_tls.cert).unwrap();
    std::fs::write(dir.join("key.pem"), &generated_tls.key).unwrap();
    let watched = watched(&cluster, o.streams);
    let mut tokens = String::new();
    for (i, p) in watched.iter().enumerate() {
        tokens.push_str(&format!("t{i},{}\n", p.key()));
        std::fs::write(dir.join("tokens").join(i.to_string()), format!("t{i}")).unwrap();
    }
    std::fs::write(dir.join("tokens.csv"), tokens).unwrap();
    let mut tls =
        palisade_controller::tls::CertFiles::new(dir.join("cert.pem"), dir.join("key.pem"))
            .unwrap()
            .server_config();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = Arc::new(tls);
    let streams = Arc::new(Streams {
        store: store.clone(),
        auth: Authenticator::Static(StaticTokens::open(&dir.join("tokens.csv")).unwrap()),
        uids: None,
        max_age: Duration::from_secs(3600),
        flows: Arc::new(palisade_controller::flows::Window::new(Default::default())),
    });
    let addr: SocketAddr = controller.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server::serve(listener, tls, streams));
        addr
    });

    // The proxies, in a process of their own; a thread keeps what each one holds.
    let held: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..watched.len()).map(|_| Default::default()).collect());
    let bytes_before = stream_bytes(&handle);
    let connecting = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--proxies-child")
        .arg(addr.to_string())
        .arg(&dir)
        .arg(watched.len().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the proxies' process");
    let stdout = child.stdout.take().expect("its output");
    {
        let held = held.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut parts = line.split(' ');
                if let (Some(Ok(i)), Some(Ok(f))) = (
                    parts.next().map(str::parse::<usize>),
                    parts.next().map(str::parse::<u64>),
                ) {
                    held[i].store(f, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    let holds = |i: usize, f: u64| held[i].load(std::sync::atomic::Ordering::Relaxed) == f;
    let pods: BTreeMap<String, Pod> = cluster.pods.iter().map(|p| (p.key(), p.clone())).collect();
    let expected = |reference: &Compiler, pods: &BTreeMap<String, Pod>| -> Vec<u64> {
        let mut services = (0, 0);
        watched
            .iter()
            .map(|p| fingerprint(&reference.compile(&pods[&p.key()]), &mut services))
            .collect()
    };
    let mut before = expected(&reference, &pods);
    loop {
        let behind: Vec<usize> = (0..watched.len())
            .filter(|i| !holds(*i, before[*i]))
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            connecting.elapsed() < Duration::from_secs(300),
            "{} proxies do not hold their policy, e.g. {:?}",
            behind.len(),
            behind
                .iter()
                .take(5)
                .map(|i| (
                    watched[*i].key(),
                    held[*i].load(std::sync::atomic::Ordering::Relaxed)
                ))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let resync_bytes = stream_bytes(&handle) - bytes_before;
    println!(
        "{} streams connected (TLS, token) and holding their policy in {:?}; first messages {:.0} B per stream on average",
        watched.len(),
        connecting.elapsed(),
        resync_bytes / watched.len() as f64
    );
    println!(
        "memory: the controller with {} streams {:.0} MB",
        watched.len(),
        rss_mb() - rss_start
    );

    // Single changes, one at a time: the time until the last affected proxy holds exactly
    // the policy a fresh compile gives it.
    let (mut reference, mut pods) = (reference, pods);
    let mut policies: BTreeMap<String, Policy> = cluster
        .policies
        .iter()
        .map(|p| (p.id.to_string(), p.clone()))
        .collect();
    let mut rng = generated::Rng(99);
    for (label, make) in [("a pod's labels", 0), ("a policy edit", 1)] {
        let mut latencies = Vec::new();
        let mut affected_counts = Vec::new();
        let mut bytes = Vec::new();
        for _ in 0..o.changes {
            let change = match make {
                0 => relabel(&mut rng, &cluster, &pods),
                _ => edit_policy(&mut rng, &cluster, &policies),
            };
            let object = match change {
                Change::Labels(p) => {
                    pods.insert(p.key(), p.clone());
                    Object::Pod(p)
                }
                Change::Policy(p) => {
                    policies.insert(p.id.to_string(), p.clone());
                    Object::Policies(vec![p])
                }
            };
            reference.apply(object.clone());
            reference.take_changes();
            let after = expected(&reference, &pods);
            let affected: Vec<usize> = (0..watched.len())
                .filter(|i| before[*i] != after[*i])
                .collect();
            let bytes_before = stream_bytes(&handle);
            let start = Instant::now();
            controller
                .block_on(events.send(Event::Apply(object)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut waiting = affected.clone();
            while !waiting.is_empty() && Instant::now() < deadline {
                waiting.retain(|i| !holds(*i, after[*i]));
                std::thread::sleep(Duration::from_micros(200));
            }
            let done = waiting.is_empty();
            assert!(done, "every affected proxy gets its new policy");
            latencies.push(start.elapsed());
            // Let the last messages of unaffected streams (if any) be counted too.
            std::thread::sleep(Duration::from_millis(20));
            bytes.push(stream_bytes(&handle) - bytes_before);
            affected_counts.push(affected.len());
            before = after;
        }
        latencies.sort();
        affected_counts.sort();
        let total: f64 = bytes.iter().sum();
        let touched: usize = affected_counts.iter().sum();
        println!(
            "{} changes of {label}: to the last affected proxy p50 {:?}, p99 {:?}, max {:?}; \
             proxies affected per change median {} (max {}); bytes sent per change {:.0} on average \
             ({:.0} per affected proxy)",
            o.changes,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or_default(),
            affected_counts[affected_counts.len() / 2],
            affected_counts.last().copied().unwrap_or(0),
            total / o.changes as f64,
            total / touched.max(1) as f64
        );
    }

    // Churn: 50 pod changes per second; CPU of the controller's threads.
    let controller_threads = ["controller", "palisade-compile"];
    let cpu_before = cpu_seconds(&controller_threads);
    let churn = Instant::now();
    let mut sent = 0;
    while churn.elapsed() < Duration::from_secs(o.churn_seconds) {
        let Change::Labels(p) = relabel(&mut rng, &cluster, &pods) else {
            unreachable!("relabel makes label changes")
        };
        pods.insert(p.key(), p.clone());
        reference.apply(Object::Pod(p.clone()));
        controller
            .block_on(events.send(Event::Apply(Object::Pod(p))))
            .unwrap();
        sent += 1;
        let next = Duration::from_millis(20) * sent;
        if let Some(wait) = next.checked_sub(churn.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let wall = churn.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&controller_threads) - cpu_before;
    reference.take_changes();
    let after = expected(&reference, &pods);
    let deadline = Instant::now() + Duration::from_secs(30);
    let behind = loop {
        let behind = (0..watched.len()).filter(|i| !holds(*i, after[*i])).count();
        if behind == 0 || Instant::now() > deadline {
            break behind;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    println!(
        "churn: {sent} pod changes in {wall:.1} s ({:.0}/s): the controller's threads used {:.2} CPU \
         cores ({:.1}% of one); proxies not holding their final policy 30 s after: {behind}",
        sent as f64 / wall,
        cpu / wall,
        100.0 * cpu / wall,
    );
    println!(
        "memory at the end: the controller {:.0} MB",
        rss_mb() - rss_start
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
