//! `palisade lab`: a real mini-cluster in network namespaces, built from manifests. Each pod
//! gets a namespace with its address and an agent serving its ports; injected pods get
//! `palisade init` and `palisade proxy`, fed by `palisade controller` reading the same
//! manifests. The lab probes every flow `simulate` judges (each address family of
//! dual-stack pods, and each pod's flows to itself), through the real kernel and proxies,
//! and reports what it observed against what was expected.

pub mod agent;
pub mod cli;
pub mod credentials;
pub mod dnsmasq;
pub mod injection;
pub mod labhost;
pub mod netns;
pub mod network;
pub mod processes;
pub mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use palisade_controller::folder::{self, manifest_files};
use palisade_policy::cluster::{Cluster, Family, Pod};
use palisade_policy::compile::Compiler;
use palisade_policy::manifest::Report;
use palisade_policy::ports::Protocol;
use palisade_policy::simulate::{simulate_with_self, SimFlow};

use dnsmasq::Placement;
use injection::{Facts, Injected};
use labhost::LabHost;
use network::Network;
use processes::Processes;
pub use processes::ProxyOptions;

/// The node's IPv4 address when no pod names one and pods have IPv4 addresses.
const DEFAULT_NODE_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 255, 1);
/// The node's IPv6 address when no pod names one and pods have IPv6 addresses.
const DEFAULT_NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 1);
/// How long proxies may take to get their first policy.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Probes run at once.
const PROBES_AT_ONCE: usize = 48;

/// What to build.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Manifest files and folders.
    pub paths: Vec<PathBuf>,
    /// Inject only pods that ask for it (annotation or namespace label), as a cluster would.
    pub respect_injection: bool,
    /// The palisade binary to run the controller, init and proxies with.
    pub binary: PathBuf,
    /// How long proxies hold new flows before their first policy.
    pub hold: Duration,
    /// Proxies log allowed flows and requests too.
    pub log_allowed: bool,
    /// How long proxies keep DNS records usable after their TTL.
    pub dns_grace: Duration,
}

impl LabOptions {
    /// How the lab starts proxies.
    pub fn proxy(&self) -> ProxyOptions {
        ProxyOptions {
            hold: self.hold,
            fail_open: false,
            max_files: None,
            net_raw: true,
            log_allowed: self.log_allowed,
            dns_grace: self.dns_grace,
        }
    }
}

/// One flow as expected and as observed.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The flow and its expected verdict.
    pub expected: SimFlow,
    /// Whether it got through; `None` when it cannot be probed (SCTP).
    pub observed: Option<bool>,
}

impl Observed {
    /// Whether what was observed differs from what was expected.
    pub fn differs(&self) -> bool {
        self.observed.is_some_and(|o| o != self.expected.allowed)
    }
}

/// Set when the user interrupts the lab; every long wait checks it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the lab was interrupted (Ctrl-C or SIGTERM).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// A lab's working folder, removed with the lab.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The file in a lab's work folder that tells `palisade flows --lab` and `rollout --lab`
/// where the lab is.
pub const LAB_STATE: &str = "lab.json";

/// What a lab leaves for the CLI in its work folder.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LabState {
    /// The node's network namespace (`/run/netns/NAME`), where the controller runs.
    pub netns: PathBuf,
    /// The controller's flows address in that namespace.
    pub flows: SocketAddr,
    /// The folder of manifests the controller reads.
    pub manifests: PathBuf,
}

impl LabState {
    /// Reads a lab's state from its work folder.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(LAB_STATE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is a lab kept up there with palisade lab --keep?)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a lab state", path.display()))
    }
}

/// A running lab. Dropping it stops every process and removes every namespace and file.
pub struct Lab {
    // Fields drop in this order: processes first, then the agents, then the namespaces.
    processes: Processes,
    runtime: tokio::runtime::Runtime,
    network: Network,
    cluster: Cluster,
    report: Report,
    injected: BTreeSet<String>,
    /// Each injected pod's containers, as the webhook patched them.
    specs: BTreeMap<String, Injected>,
    hosts: Vec<LabHost>,
    dns: Placement,
    manifests: PathBuf,
    options: LabOptions,
    peers: agent::Peers,
    workdir: WorkDir,
}

/// Copies the manifests under `paths` into `into`, each path in a folder of its own.
fn copy_manifests(paths: &[PathBuf], into: &Path) -> anyhow::Result<()> {
    for (i, path) in paths.iter().enumerate() {
        let base = if path.is_dir() {
            path.as_path()
        } else {
            path.parent().unwrap_or(Path::new(""))
        };
        for file in
            manifest_files(path).with_context(|| format!("cannot read {}", path.display()))?
        {
            let rel = file.strip_prefix(base).unwrap_or(&file);
            let dest = into.join(i.to_string()).join(rel);
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::copy(&file, &dest)
                .with_context(|| format!("cannot copy {}", file.display()))?;
        }
    }
    Ok(())
}

/// The node's addresses: those the first pod naming its node gives (`hostIPs`), plus one
/// of each family pods have and the node has not (a dual-stack or IPv6-only cluster whose
/// manifests name an IPv4 node only), primary first.
fn node_ips(cluster: &Cluster) -> Vec<IpAddr> {
    let mut ips = cluster
        .pods
        .iter()
        .find(|p| !p.host_ips.is_empty())
        .map(|p| p.host_ips.clone())
        .unwrap_or_default();
    for (family, default) in [
        (Family::V4, IpAddr::from(DEFAULT_NODE_V4)),
        (Family::V6, IpAddr::from(DEFAULT_NODE_V6)),
    ] {
        let pods_have = cluster
            .pods
            .iter()
            .any(|p| !p.host_network && p.ip_of(family).is_some());
        if pods_have && !ips.iter().any(|ip| Family::of(*ip) == family) {
            ips.push(default);
        }
    }
    if ips.is_empty() {
        ips.push(DEFAULT_NODE_V4.into());
    }
    ips
}

/// The lab's own facts about pods, written after the user's manifests so that they win:
/// every pod on the lab's node, host-network pods at the node's addresses.
fn pod_overrides(cluster: &Cluster, node_ips: &[IpAddr]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = cluster
        .pods
        .iter()
        .map(|p| {
            let ips: Vec<IpAddr> = if p.host_network { node_ips.to_vec() } else { p.ips.clone() };
            let list = |ips: &[IpAddr]| -> Vec<serde_json::Value> {
                ips.iter().map(|ip| serde_json::json!({"ip": ip.to_string()})).collect()
            };
            let ports: Vec<serde_json::Value> = p
                .ports
                .iter()
                .map(|c| {
                    let mut port = serde_json::json!({"containerPort": c.port, "protocol": c.protocol.as_str()});
                    if let Some(name) = &c.name {
                        port["name"] = name.clone().into();
                    }
                    port
                })
                .collect();
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels, "annotations": p.annotations},
                "spec": {"hostNetwork": p.host_network, "containers": [{"name": "app", "ports": ports}]},
                "status": {
                    "podIP": ips[0].to_string(),
                    "podIPs": list(&ips),
                    "hostIP": node_ips[0].to_string(),
                    "hostIPs": list(node_ips),
                },
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

impl Lab {
    /// Builds the lab and waits until every proxy has its policy.
    pub fn start(options: LabOptions) -> anyhow::Result<Lab> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let workdir = WorkDir(std::env::temp_dir().join(format!("palisade-lab-{id}")));
        let manifests = workdir.0.join("manifests");
        std::fs::create_dir_all(&manifests)?;
        copy_manifests(&options.paths, &manifests)?;

        let (first, _) = folder::load(std::slice::from_ref(&manifests));
        let node_ips = node_ips(&first);
        if let Some((pod, ip)) = first.pods.iter().find_map(|p| {
            let clash = p.ips.iter().find(|ip| node_ips.contains(ip));
            clash.filter(|_| !p.host_network).map(|ip| (p.key(), ip))
        }) {
            bail!("pod {pod} has the node's address {ip}; give it another podIP");
        }
        // `~` sorts after every other name, so these objects are read last and win.
        let overrides = serde_json::to_vec_pretty(&pod_overrides(&first, &node_ips))?;
        std::fs::write(manifests.join("~lab-pods.json"), overrides)?;
        let (cluster, report) = folder::load(std::slice::from_ref(&manifests));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.spawn(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            INTERRUPTED.store(true, Ordering::Relaxed);
        });

        let hosts = labhost::read_paths(std::slice::from_ref(&manifests))?;
        for h in &hosts {
            if let Some(ip) = h
                .addresses
                .iter()
                .find(|ip| node_ips.contains(ip) || cluster.pods.iter().any(|p| p.ips.contains(ip)))
            {
                bail!("LabHost {}: address {ip} is the node's or a pod's", h.name);
            }
        }
        let mut network = Network::build("plab", &node_ips, &cluster.pods)
            .context("building the lab's network")?;
        for h in &hosts {
            network
                .add_host(&h.name, &h.addresses)
                .with_context(|| format!("adding LabHost {}", h.name))?;
        }
        let services = Compiler::new(&cluster).services().clone();
        network
            .translate_services(&services)
            .context("translating Service addresses")?;
        // Every pod resolves through the lab's DNS server, as the kubelet would set it up.
        let dns = dnsmasq::placement(&cluster, &services, &node_ips);
        for pod in &cluster.pods {
            if let Some(ns) = network.pods.get_mut(&pod.key()) {
                ns.set_resolv_conf(&dnsmasq::resolv_conf(
                    &pod.namespace,
                    dns.nameserver_for(pod),
                ))?;
            }
        }
        // The policy streams' CA and certificate, and a token for every pod that may get a
        // proxy.
        let credentials = credentials::Credentials::create(
            &workdir.0.join("secrets"),
            &node_ips,
            cluster
                .pods
                .iter()
                .filter(|p| !p.host_network)
                .map(|p| p.key()),
        )
        .context("making the lab's CA, certificate and tokens")?;
        // Each pod goes through the injection webhook's decision, as in a cluster.
        let webhook = injection::Webhook {
            ca: credentials.ca_pem()?,
            hold: options.hold,
            fail_open: false,
            log_allowed: options.log_allowed,
            dns_grace: options.dns_grace,
        };
        let mut specs: BTreeMap<String, Injected> = BTreeMap::new();
        for pod in &cluster.pods {
            let force = !options.respect_injection;
            if let Some(spec) = injection::review(&cluster, pod, &node_ips, webhook.clone(), force)?
            {
                specs.insert(pod.key(), spec);
            }
        }
        let injected: BTreeSet<String> = specs.keys().cloned().collect();

        let peers = agent::Peers::default();
        {
            let _inside = runtime.enter();
            for pod in &cluster.pods {
                let ns = network.netns_of(pod);
                let mut ports: Vec<(Protocol, u16)> =
                    pod.ports.iter().map(|c| (c.protocol, c.port)).collect();
                ports.sort();
                ports.dedup();
                for (protocol, port) in ports {
                    if dns.pods.contains(&(pod.key(), port)) {
                        continue; // dnsmasq serves it
                    }
                    agent::serve(ns, &pod.ips, port, protocol, &pod.key(), &peers).with_context(
                        || format!("serving {port}/{protocol} in pod {}", pod.key()),
                    )?;
                }
            }
        }

        {
            let _inside = runtime.enter();
            for h in &hosts {
                for &port in &h.ports {
                    agent::serve(
                        &network.hosts[&h.name],
                        &h.addresses,
                        port,
                        Protocol::Tcp,
                        &h.key(),
                        &peers,
                    )
                    .with_context(|| format!("serving {port}/TCP on LabHost {}", h.name))?;
                }
            }
        }

        let mut processes =
            Processes::new(options.binary.clone(), workdir.0.join("logs"), credentials)?;
        if dns.pods.is_empty() {
            processes.start_dnsmasq(&network.node, &dnsmasq::config(&cluster, &hosts, 53), 53)?;
        }
        for (pod, port) in &dns.pods {
            let ns = network.pods.get(pod).unwrap_or(&network.node);
            processes.start_dnsmasq(ns, &dnsmasq::config(&cluster, &hosts, *port), *port)?;
        }
        processes.start_controller(&network.node, &manifests)?;
        let state = LabState {
            netns: network.node.path(),
            flows: processes::FLOWS_ADDR,
            manifests: manifests.clone(),
        };
        std::fs::write(
            workdir.0.join(LAB_STATE),
            serde_json::to_vec_pretty(&state)?,
        )?;
        for pod in &cluster.pods {
            let Some(spec) = specs.get(&pod.key()) else {
                continue;
            };
            let ns = network.netns_of(pod);
            let facts = Facts {
                pod,
                node_ips: &node_ips,
            };
            processes.init(ns, &spec.init, &facts)?;
            processes.start_proxy(ns, &spec.proxy, &facts, &options.proxy())?;
        }
        let lab = Lab {
            processes,
            runtime,
            network,
            cluster,
            report,
            injected,
            specs,
            hosts,
            dns,
            manifests,
            options,
            peers,
            workdir,
        };
        lab.wait_ready(READY_TIMEOUT)?;
        Ok(lab)
    }

    /// Waits until every injected pod's proxy is ready (has its policy).
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        for pod in &self.injected {
            loop {
                if interrupted() {
                    bail!("interrupted");
                }
                if self.run_probe(pod, |c| &c.readiness_probe)? {
                    break;
                }
                if start.elapsed() > timeout {
                    let log =
                        std::fs::read_to_string(self.processes.proxy_log(pod)).unwrap_or_default();
                    bail!(
                        "the proxy of pod {pod} was not ready after {timeout:?}; its log:\n{log}"
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// An injected pod, its patched containers, and what the downward API tells them.
    fn injected_pod(&self, pod: &str) -> anyhow::Result<(&Pod, &Injected, Facts<'_>)> {
        let p = self.pod(pod)?;
        let spec = self
            .specs
            .get(pod)
            .ok_or_else(|| anyhow!("pod {pod} has no proxy"))?;
        let facts = Facts {
            pod: p,
            node_ips: &self.network.node_ips,
        };
        Ok((p, spec, facts))
    }

    /// Runs one of a pod's proxy probes, as the kubelet would: whether it passed.
    fn run_probe(
        &self,
        pod: &str,
        which: fn(
            &k8s_openapi::api::core::v1::Container,
        ) -> &Option<k8s_openapi::api::core::v1::Probe>,
    ) -> anyhow::Result<bool> {
        let (p, spec, facts) = self.injected_pod(pod)?;
        Ok(injection::probe(
            self.network.netns_of(p),
            self.processes.image(),
            &spec.proxy,
            which(&spec.proxy),
            &facts,
        )?)
    }

    /// The cluster the lab was built from (with the lab's addresses).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// What reading the manifests reported.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The pods that have a proxy.
    pub fn injected(&self) -> &BTreeSet<String> {
        &self.injected
    }

    /// The folder the controller reads: change files here to change the policy.
    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    /// The node's namespace.
    pub fn node(&self) -> &netns::Netns {
        &self.network.node
    }

    /// A pod's namespace.
    pub fn netns(&self, pod: &str) -> anyhow::Result<&netns::Netns> {
        let p = self.pod(pod)?;
        Ok(self.network.netns_of(p))
    }

    fn pod(&self, key: &str) -> anyhow::Result<&Pod> {
        let (ns, name) = key
            .split_once('/')
            .ok_or_else(|| anyhow!("{key:?} is not namespace/name"))?;
        self.cluster
            .pod(ns, name)
            .ok_or_else(|| anyhow!("no pod {key} in the lab"))
    }

    /// The lab's runtime, to run async work against the lab.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Whether a connection from pod `from` to `port`/`protocol` at `to` (a pod, or an
    /// address) gets through to a server answering as `expect`.
    pub fn probe_addr(
        &self,
        from: &str,
        to: SocketAddr,
        protocol: Protocol,
        expect: &str,
    ) -> anyhow::Result<bool> {
        let ns = self.netns(from)?;
        Ok(self
            .runtime
            .block_on(agent::probe(ns, to, protocol, expect)))
    }

    /// Whether a connection from pod `from` to pod `to` on `port`/`protocol` gets through.
    pub fn probe(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: Protocol,
    ) -> anyhow::Result<bool> {
        let target = self.pod(to)?;
        let ip = *target
            .ips
            .first()
            .ok_or_else(|| anyhow!("pod {to} has no address"))?;
        self.probe_addr(from, SocketAddr::new(ip, port), protocol, to)
    }

    /// What the lab expects of every flow: `simulate`'s verdicts (with each pod's flows to
    /// itself), where a pod without a proxy (with `--respect-injection`) lets everything
    /// through on its side.
    pub fn expected(&self) -> Vec<SimFlow> {
        let mut flows = simulate_with_self(&self.cluster).flows;
        for f in &mut flows {
            for (pod, side) in [(&f.from, &mut f.egress), (&f.to, &mut f.ingress)] {
                if self.injected.contains(pod) {
                    continue;
                }
                // No proxy there: nothing inspects requests or denies.
                side.http = false;
                if !side.allowed {
                    side.allowed = true;
                    side.policies.clear();
                    side.action = Some(palisade_policy::verdict::Action::Allow);
                }
            }
            f.allowed = f.egress.allowed && f.ingress.allowed;
        }
        flows
    }

    /// Probes every flow of [`Lab::expected`] (SCTP ones are listed, not probed), each
    /// to the destination's address of the flow's family.
    pub fn probe_all(&self) -> anyhow::Result<Vec<Observed>> {
        let flows = self.expected();
        let dns_pods = &self.dns.pods;
        let permits = Arc::new(tokio::sync::Semaphore::new(PROBES_AT_ONCE));
        let mut tasks = Vec::with_capacity(flows.len());
        for flow in flows {
            let from = self.netns(&flow.from)?;
            let to = self.pod(&flow.to)?;
            let ip = to
                .ip_of(flow.family)
                .ok_or_else(|| anyhow!("pod {} has no {} address", flow.to, flow.family))?;
            let dst = SocketAddr::new(ip, flow.port);
            let permits = permits.clone();
            tasks.push(async move {
                if flow.protocol == Protocol::Sctp || interrupted() {
                    return Observed {
                        expected: flow,
                        observed: None,
                    };
                }
                let _permit = permits.acquire().await;
                // A port with HTTP rules is probed with a real request; a DNS server, with a
                // query.
                let observed = if dns_pods.contains(&(flow.to.clone(), flow.port)) {
                    agent::probe_dns(from, dst, flow.protocol).await
                } else if flow.http() && flow.protocol == Protocol::Tcp {
                    agent::probe_http(from, dst, &flow.to).await
                } else {
                    agent::probe(from, dst, flow.protocol, &flow.to).await
                };
                Observed {
                    expected: flow,
                    observed: Some(observed),
                }
            });
        }
        let observed = self.runtime.block_on(futures_util::future::join_all(tasks));
        if interrupted() {
            bail!("interrupted");
        }
        Ok(observed)
    }

    /// Stops the controller: proxies keep their last policy.
    pub fn stop_controller(&mut self) {
        self.processes.stop_controller();
    }

    /// Starts the controller again.
    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        self.processes
            .start_controller(&self.network.node, &self.manifests)?;
        Ok(())
    }

    /// The node's addresses, primary first.
    pub fn node_ips(&self) -> &[IpAddr] {
        &self.network.node_ips
    }

    /// Runs `palisade init` in an injected pod again, as a restarted init container would:
    /// it puts back whatever was changed in its rules.
    pub fn install_rules(&self, pod: &str) -> anyhow::Result<()> {
        let (p, spec, facts) = self.injected_pod(pod)?;
        self.processes
            .init(self.network.netns_of(p), &spec.init, &facts)?;
        Ok(())
    }

    /// The process id of a pod's proxy, if it runs.
    pub fn proxy_pid(&self, pod: &str) -> Option<u32> {
        self.processes.proxy_pid(pod)
    }

    /// Stops a pod's proxy: the pod's traffic must then be refused, never passed.
    pub fn stop_proxy(&mut self, pod: &str) {
        self.processes.stop_proxy(pod);
    }

    /// Starts a pod's proxy again (replacing a running one) as the lab starts them, and
    /// waits until it is ready.
    pub fn start_proxy(&mut self, pod: &str) -> anyhow::Result<()> {
        self.start_proxy_with(pod, &self.options.proxy())?;
        self.wait_ready(READY_TIMEOUT)
    }

    /// Starts a pod's proxy again (replacing a running one) with other options, and waits
    /// until it listens (not for its first policy).
    pub fn start_proxy_with(&mut self, pod: &str, options: &ProxyOptions) -> anyhow::Result<()> {
        let p = self.pod(pod)?.clone();
        let ns = self.network.netns_of(&p);
        let node_ips = self.network.node_ips.clone();
        let webhook = injection::Webhook {
            ca: self.credentials().ca_pem()?,
            hold: options.hold,
            fail_open: options.fail_open,
            log_allowed: options.log_allowed,
            dns_grace: options.dns_grace,
        };
        let spec = injection::review(&self.cluster, &p, &node_ips, webhook, true)?
            .ok_or_else(|| anyhow!("pod {pod} cannot have a proxy"))?;
        let facts = Facts {
            pod: &p,
            node_ips: &node_ips,
        };
        self.processes
            .start_proxy(ns, &spec.proxy, &facts, options)?;
        self.specs.insert(pod.to_owned(), spec);
        let start = Instant::now();
        // The admin server starts once every listener is open.
        while !self.run_probe(pod, |c| &c.startup_probe)? {
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "the proxy of pod {pod} did not start; its log:\n{}",
                    self.proxy_log(pod)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The calls a pod's servers received so far (the lab keeps the most recent
    /// [`agent::Peers::KEPT`]), oldest first: who its app saw calling.
    pub fn calls_to(&self, pod: &str) -> Vec<agent::Accepted> {
        self.peers
            .all()
            .into_iter()
            .filter(|a| a.pod == pod)
            .collect()
    }

    /// The flow log lines a pod's proxy wrote so far.
    pub fn flow_log(&self, pod: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.processes.flow_log(pod))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A pod's proxy diagnostics so far.
    pub fn proxy_log(&self, pod: &str) -> String {
        std::fs::read_to_string(self.processes.proxy_log(pod)).unwrap_or_default()
    }

    /// Asks a pod's proxy admin server for `path` (e.g. `/metrics`).
    pub fn admin(&self, pod: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let ns = self.netns(pod)?;
        Ok(self.runtime.block_on(agent::admin_get(ns, path))?)
    }

    /// Proxies that exited, and how.
    pub fn exited_proxies(&mut self) -> Vec<(String, String)> {
        self.processes.exited()
    }

    /// Writes (or replaces) a manifest file the controller reads, atomically.
    pub fn write_manifest(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.workdir.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifests.join(name))?;
        Ok(())
    }

    /// The CA, certificate and tokens of the lab's policy streams.
    pub fn credentials(&self) -> &credentials::Credentials {
        self.processes.credentials()
    }

    /// The lab's hosts outside the cluster.
    pub fn hosts(&self) -> &[LabHost] {
        &self.hosts
    }

    /// Where the lab's DNS server runs and the address pods resolve through.
    pub fn dns(&self) -> &Placement {
        &self.dns
    }

    /// A command that runs `program` in a pod, as its app would: in its network namespace,
    /// seeing its resolv.conf.
    pub fn command(&self, pod: &str, program: &str) -> anyhow::Result<std::process::Command> {
        Ok(self.netns(pod)?.command(program))
    }

    /// The lab's working folder (manifests and logs).
    pub fn workdir(&self) -> &Path {
        &self.workdir.0
    }
}
