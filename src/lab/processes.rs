//! palisade's own parts running in the lab, as a cluster would run them: the controller in
//! the node, and in each injected pod `palisade init` followed by `palisade proxy` as uid
//! 2190. Every process is stopped when this is dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use palisade_policy::cluster::{Family, Pod};
use palisade_proxy::controller_address::ControllerAddress;

use super::netns::Netns;

/// The proxy's uid, which its iptables rules leave alone.
pub const PROXY_UID: &str = "2190";
/// The controller's policy stream port.
pub const CONTROLLER_PORT: u16 = 7443;

/// Pod annotations that become `palisade init` options, as the injector maps them.
const INIT_ANNOTATIONS: [(&str, &str); 3] = [
    ("palisade.dev/skip-inbound-ports", "--skip-inbound-ports"),
    ("palisade.dev/skip-outbound-ports", "--skip-outbound-ports"),
    ("palisade.dev/skip-outbound-cidrs", "--skip-outbound-cidrs"),
];
/// The pod annotation that lets ICMP echo in and out (`palisade init --allow-icmp`).
pub const ALLOW_ICMP_ANNOTATION: &str = "palisade.dev/allow-icmp";

/// How a proxy is started.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// How long it holds new flows before its first policy.
    pub hold: Duration,
    /// Let new flows through when no policy arrived in time (`--fail-mode open`).
    pub fail_open: bool,
    /// A cap on its open descriptors.
    pub max_files: Option<u32>,
    /// Give it CAP_NET_RAW, as the chart does: UDP, and connecting to the app from the
    /// client's own address, need it.
    pub net_raw: bool,
    /// Log allowed flows and requests too (`--log-allowed`).
    pub log_allowed: bool,
}

/// The running parts, and where their logs go.
pub struct Processes {
    binary: PathBuf,
    logs: PathBuf,
    controller: Option<Child>,
    proxies: BTreeMap<String, Child>,
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Processes {
    /// Nothing running yet; logs go under `logs`.
    pub fn new(binary: PathBuf, logs: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            binary,
            logs,
            controller: None,
            proxies: BTreeMap::new(),
        })
    }

    fn log(&self, name: &str) -> io::Result<File> {
        File::options()
            .create(true)
            .append(true)
            .open(self.logs.join(name))
    }

    /// Where a pod's proxy writes its flow log.
    pub fn flow_log(&self, pod: &str) -> PathBuf {
        self.logs
            .join(format!("{}.flows.jsonl", pod.replace('/', "_")))
    }

    /// Where a pod's proxy writes its diagnostics.
    pub fn proxy_log(&self, pod: &str) -> PathBuf {
        self.logs.join(format!("{}.log", pod.replace('/', "_")))
    }

    /// Starts the controller in the node, reading `manifests`, on every node address of
    /// both families.
    pub fn start_controller(&mut self, node: &Netns, manifests: &Path) -> io::Result<()> {
        let log = self.log("controller.log")?;
        let child = node
            .command(path_str(&self.binary)?)
            .arg("controller")
            .arg("--source")
            .arg(manifests)
            .args([
                "--listen",
                &SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), CONTROLLER_PORT).to_string(),
            ])
            .args(["--metrics", "127.0.0.1:9090", "--poll", "100ms"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.controller = Some(child);
        Ok(())
    }

    /// Stops the controller (proxies keep their last policy).
    pub fn stop_controller(&mut self) {
        if let Some(c) = self.controller.take() {
            stop(c);
        }
    }

    /// Installs the pod's iptables rules, as its init container would.
    pub fn init(&self, ns: &Netns, pod: &Pod, node_ips: &[IpAddr]) -> io::Result<()> {
        let mut command = ns.command(path_str(&self.binary)?);
        command.args(["init", "--dns-servers", "none"]);
        command.args(["--node-ips", &joined(node_ips)]);
        for (annotation, flag) in INIT_ANNOTATIONS {
            if let Some(value) = pod.annotations.get(annotation) {
                command.args([flag, value]);
            }
        }
        if pod
            .annotations
            .get(ALLOW_ICMP_ANNOTATION)
            .is_some_and(|v| v == "true")
        {
            command.arg("--allow-icmp");
        }
        let output = command.stdin(Stdio::null()).output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "palisade init failed in pod {}: {}",
                pod.key(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Starts the pod's proxy as uid 2190, with CAP_NET_RAW only (unless `options` say
    /// otherwise), as a sidecar would run.
    pub fn start_proxy(
        &mut self,
        ns: &Netns,
        pod: &Pod,
        node_ips: &[IpAddr],
        options: &ProxyOptions,
    ) -> io::Result<()> {
        let key = pod.key();
        // A proxy already running holds the ports: it goes first.
        self.stop_proxy(&key);
        // The controller, at the node's address of the pod's own family.
        let family = pod.ips.first().map_or(Family::V4, |ip| Family::of(*ip));
        let node_ip = node_ips
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
            .unwrap_or(node_ips[0]);
        let controller = ControllerAddress::new(node_ip, CONTROLLER_PORT);
        let caps = if options.net_raw { "+net_raw" } else { "-all" };
        let mut command = match options.max_files {
            Some(n) => {
                let mut c = ns.command("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("setpriv");
                c
            }
            None => ns.command("setpriv"),
        };
        let child = command
            .args([
                &format!("--reuid={PROXY_UID}"),
                &format!("--regid={PROXY_UID}"),
                "--clear-groups",
                &format!("--inh-caps={caps}"),
                &format!("--ambient-caps={caps}"),
            ])
            .arg(&self.binary)
            .args(["proxy", "--pod", &key])
            .args(["--controller", &controller.to_string()])
            .args(["--pod-ips", &joined(&pod.ips)])
            .args(["--node-ips", &joined(node_ips)])
            .args(["--hold", &format!("{}ms", options.hold.as_millis())])
            .args([
                "--fail-mode",
                if options.fail_open { "open" } else { "closed" },
            ])
            .args(["--dns-upstreams", &node_ip.to_string()])
            .args(options.log_allowed.then_some("--log-allowed"))
            // As the injector would, from the pod's annotation.
            .envs(
                pod.annotations
                    .get("palisade.dev/opaque-ports")
                    .map(|ports| ("PALISADE_OPAQUE_PORTS", ports)),
            )
            .stdin(Stdio::null())
            .stdout(File::create(self.flow_log(&key))?)
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(self.proxy_log(&key))?,
            )
            .spawn()?;
        self.proxies.insert(key, child);
        Ok(())
    }

    /// The process id of a pod's proxy, if it runs.
    pub fn proxy_pid(&self, pod: &str) -> Option<u32> {
        self.proxies.get(pod).map(Child::id)
    }

    /// Stops a pod's proxy: its pod's traffic is then refused, never passed.
    pub fn stop_proxy(&mut self, pod: &str) {
        if let Some(c) = self.proxies.remove(pod) {
            stop(c);
        }
    }

    /// The pods whose proxies have exited, and how.
    pub fn exited(&mut self) -> Vec<(String, String)> {
        self.proxies
            .iter_mut()
            .filter_map(|(pod, c)| {
                c.try_wait()
                    .ok()
                    .flatten()
                    .map(|s| (pod.clone(), s.to_string()))
            })
            .collect()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, c) in std::mem::take(&mut self.proxies) {
            stop(c);
        }
        self.stop_controller();
    }
}

/// Addresses as a comma-separated list, as flags and the downward API give them.
fn joined(ips: &[IpAddr]) -> String {
    let shown: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
    shown.join(",")
}

fn path_str(p: &Path) -> io::Result<&str> {
    p.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the palisade binary's path is not UTF-8",
        )
    })
}
