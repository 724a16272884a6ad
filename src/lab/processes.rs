//! palisade's own parts running in the lab, as a cluster would run them: the controller in
//! the node, and in each injected pod the init and proxy containers the webhook's patch
//! describes. Every process is stopped when this is dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::bail;
use k8s_openapi::api::core::v1::Container;

use super::injection::{self, Facts};

use super::credentials::Credentials;
use super::netns::Netns;

/// The controller's policy stream port.
pub const CONTROLLER_PORT: u16 = 7443;
/// Where the lab's controller serves recent flows, in the node's namespace.
pub const FLOWS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9091);

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
    /// How long DNS records outlive their TTL (`--dns-grace`).
    pub dns_grace: Duration,
}

/// The file capabilities of the palisade binary in the image (see the Dockerfile): NET_RAW
/// permitted, not effective, which the proxy raises at start. Container runtimes give a
/// non-root process no capability of its own, so this is how the proxy, as uid 2190, gets
/// the one it needs; the lab's pods run a copy of the binary carrying the same.
pub const IMAGE_FILE_CAPABILITIES: &str = "cap_net_raw=p";

/// The running parts, and where their logs go.
pub struct Processes {
    binary: PathBuf,
    image: PathBuf,
    logs: PathBuf,
    credentials: Credentials,
    controller: Option<Child>,
    proxies: BTreeMap<String, Child>,
    dns_servers: Vec<Child>,
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Processes {
    /// Nothing running yet; logs go under `logs`, and so does the copy of `binary` that
    /// stands for the image's (see [`IMAGE_FILE_CAPABILITIES`]); the streams use
    /// `credentials`.
    pub fn new(binary: PathBuf, logs: PathBuf, credentials: Credentials) -> io::Result<Self> {
        std::fs::create_dir_all(&logs)?;
        let image = logs.join("palisade-image");
        std::fs::copy(&binary, &image)?;
        let setcap = Command::new("setcap")
            .arg(IMAGE_FILE_CAPABILITIES)
            .arg(&image)
            .output()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run setcap (Debian's libcap2-bin): {e}"),
                )
            })?;
        if !setcap.status.success() {
            return Err(io::Error::other(format!(
                "setcap {IMAGE_FILE_CAPABILITIES} {}: {}",
                image.display(),
                String::from_utf8_lossy(&setcap.stderr).trim()
            )));
        }
        Ok(Self {
            binary,
            image,
            logs,
            credentials,
            controller: None,
            proxies: BTreeMap::new(),
            dns_servers: Vec::new(),
        })
    }

    /// The palisade binary the pods' containers run: a copy carrying the image's file
    /// capabilities.
    pub fn image(&self) -> &Path {
        &self.image
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

    /// The secrets the streams use.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
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
            .arg("--tls-cert")
            .arg(&self.credentials.cert)
            .arg("--tls-key")
            .arg(&self.credentials.key)
            .arg("--tokens")
            .arg(&self.credentials.tokens)
            .args(["--metrics", "127.0.0.1:9090", "--poll", "100ms"])
            .args(["--flows-listen", &FLOWS_ADDR.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.controller = Some(child);
        Ok(())
    }

    /// Starts the lab's DNS server (dnsmasq) in `ns` with this configuration, and waits
    /// until it answers on `port`.
    pub fn start_dnsmasq(&mut self, ns: &Netns, config: &str, port: u16) -> io::Result<()> {
        let n = self.dns_servers.len();
        let conf = self.logs.join(format!("dnsmasq-{n}.conf"));
        std::fs::write(&conf, config)?;
        let log = self.log(&format!("dnsmasq-{n}.log"))?;
        let child = ns
            .command("dnsmasq")
            .arg(format!("--conf-file={}", path_str(&conf)?))
            .arg(format!(
                "--pid-file={}",
                path_str(&self.logs.join(format!("dnsmasq-{n}.pid")))?
            ))
            .args(["--keep-in-foreground", "--log-facility=-", "--log-queries"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.dns_servers.push(child);
        // dnsmasq binds before it logs that it started; wait for its port.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let out = ns
                .command("ss")
                .args(["-Hlun", &format!("sport = :{port}")])
                .output()?;
            if !out.stdout.is_empty() {
                return Ok(());
            }
            if let Some(c) = self.dns_servers.last_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(io::Error::other(format!(
                        "dnsmasq exited ({status}); see {}",
                        self.logs.join(format!("dnsmasq-{n}.log")).display()
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other("dnsmasq did not listen within 10 s"))
    }

    /// Stops the controller (proxies keep their last policy).
    pub fn stop_controller(&mut self) {
        if let Some(c) = self.controller.take() {
            stop(c);
        }
    }

    /// Runs the pod's init container, as the kubelet would.
    pub fn init(&self, ns: &Netns, init: &Container, facts: &Facts<'_>) -> anyhow::Result<()> {
        let output = injection::command(ns, &self.image, init, facts, &[])?
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            bail!(
                "palisade init failed in pod {}: {}",
                facts.pod.key(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts the pod's proxy container as the kubelet would (replacing a running one),
    /// with a cap on its descriptors and without CAP_NET_RAW if `options` say so.
    pub fn start_proxy(
        &mut self,
        ns: &Netns,
        proxy: &Container,
        facts: &Facts<'_>,
        options: &ProxyOptions,
    ) -> anyhow::Result<()> {
        let key = facts.pod.key();
        // A proxy already running holds the ports: it goes first.
        self.stop_proxy(&key);
        let wrap: Vec<String> = match options.max_files {
            Some(n) => vec!["prlimit".into(), format!("--nofile={n}:{n}")],
            None => Vec::new(),
        };
        let mut proxy = proxy.clone();
        // The kubelet mounts the pod's projected token where the proxy's environment says;
        // the lab's token for the pod stands there.
        for e in proxy.env.iter_mut().flatten() {
            if e.name == "PALISADE_TOKEN_FILE" {
                e.value = Some(self.credentials.token_file(&key).display().to_string());
            }
        }
        if !options.net_raw {
            // The fallback tests: a cluster that does not grant the capability.
            if let Some(caps) = proxy
                .security_context
                .as_mut()
                .and_then(|s| s.capabilities.as_mut())
            {
                caps.add = Some(Vec::new());
            }
        }
        let child = injection::command(ns, &self.image, &proxy, facts, &wrap)?
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
        for c in std::mem::take(&mut self.dns_servers) {
            stop(c);
        }
        self.stop_controller();
    }
}

fn path_str(p: &Path) -> io::Result<&str> {
    p.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the palisade binary's path is not UTF-8",
        )
    })
}
