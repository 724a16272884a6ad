//! How a lab pod gets palisade: the lab asks the injection webhook's own decision
//! ([`palisade_controller::inject::review`]) about the pod, applies the patch, and then
//! plays the kubelet: it runs the patched init and proxy containers with their command,
//! arguments, environment (downward API and `$(VAR)` references resolved), user, groups,
//! capabilities and `no_new_privs`, so every lab test runs what the webhook produces.
//! The lab runs in the machine's file system: read-only root file systems and volumes are
//! not reproduced.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod};
use palisade_controller::inject::containers::{BINARY, INIT_NAME, PROXY_NAME};
use palisade_controller::inject::{self, Decision, FailMode, InjectOptions, SidecarKind};
use palisade_policy::cluster::{self, Cluster};
use palisade_proxy::controller_address::ControllerAddress;
use serde_json::json;

use super::netns::Netns;
use super::processes::CONTROLLER_PORT;

/// The `PATH` of palisade's image, where init finds iptables and ip.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The image the lab's pods are injected with; the lab runs its own binary for it.
const LAB_IMAGE: &str = "palisade:lab";

/// A pod's two palisade containers, as the webhook's patch put them.
#[derive(Debug, Clone)]
pub struct Injected {
    /// `palisade init`.
    pub init: Container,
    /// `palisade proxy`.
    pub proxy: Container,
}

/// How the lab configures the webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The CA proxies trust for the policy stream (PEM).
    pub ca: String,
    /// How long proxies hold new flows before their first policy.
    pub hold: std::time::Duration,
    /// Their fail mode is open.
    pub fail_open: bool,
    /// They log allowed flows too.
    pub log_allowed: bool,
    /// How long they keep DNS records usable after their TTL.
    pub dns_grace: std::time::Duration,
}

/// The node's address of the pod's own family (the first one if it has none).
fn node_ip_for(pod: &cluster::Pod, node_ips: &[IpAddr]) -> IpAddr {
    let v6 = pod.ips.first().is_some_and(IpAddr::is_ipv6);
    node_ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv6() == v6)
        .unwrap_or(node_ips[0])
}

/// What the webhook would be configured with for `pod`: its proxy reaches the controller
/// at the node's address of its own family.
fn options(pod: &cluster::Pod, node_ips: &[IpAddr], webhook: Webhook) -> InjectOptions {
    let controller = ControllerAddress::new(node_ip_for(pod, node_ips), CONTROLLER_PORT);
    let (hold, fail_open) = (webhook.hold, webhook.fail_open);
    let mut o = InjectOptions::new(
        LAB_IMAGE.into(),
        controller.to_string(),
        SidecarKind::Native,
    );
    o.hold = Some(format!("{}ms", hold.as_millis()));
    o.fail_mode = if fail_open {
        FailMode::Open
    } else {
        FailMode::Closed
    };
    o.log_allowed = webhook.log_allowed;
    o.dns_grace = Some(format!("{}ms", webhook.dns_grace.as_millis()));
    o.ca = Some(webhook.ca);
    o
}

/// The pod as the API server would hand it to the webhook: the lab's app container with
/// the pod's ports, and the cluster's DNS (`ClusterFirst`: the lab writes each pod's
/// resolv.conf, which init and the proxy read, as the kubelet would).
fn api_pod(pod: &cluster::Pod, force: bool) -> anyhow::Result<Pod> {
    let mut annotations = pod.annotations.clone();
    if force {
        annotations.insert("palisade.dev/inject".into(), "enabled".into());
    }
    let ports: Vec<serde_json::Value> = pod
        .ports
        .iter()
        .map(|p| json!({"containerPort": p.port, "protocol": p.protocol.as_str(), "name": p.name}))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels, "annotations": annotations},
        "spec": {
            "hostNetwork": pod.host_network,
            "dnsPolicy": "ClusterFirst",
            "containers": [{"name": "app", "image": "palisade-lab-agent", "ports": ports}],
        },
    }))?)
}

fn api_namespace(ns: &cluster::Namespace) -> anyhow::Result<Namespace> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ns.name, "labels": ns.labels, "annotations": ns.annotations},
    }))?)
}

/// Asks the webhook about `pod`: its patched containers, `None` if it gets no proxy, or
/// the webhook's refusal. With `force`, every pod asks for injection.
pub fn review(
    cluster: &Cluster,
    pod: &cluster::Pod,
    node_ips: &[IpAddr],
    webhook: Webhook,
    force: bool,
) -> anyhow::Result<Option<Injected>> {
    let api = api_pod(pod, force)?;
    let options = options(pod, node_ips, webhook);
    let ns = cluster
        .namespace(&pod.namespace)
        .map(api_namespace)
        .transpose()?;
    let patch = match inject::review(&api, ns.as_ref(), &options) {
        Decision::Leave { .. } => return Ok(None),
        Decision::Refuse { message } => bail!("the webhook refuses {message}"),
        Decision::Inject { patch, .. } => patch,
    };
    let mut doc = serde_json::to_value(&api)?;
    json_patch::patch(&mut doc, &patch).context("applying the webhook's patch")?;
    let patched: Pod = serde_json::from_value(doc)?;
    let spec = patched.spec.unwrap_or_default();
    let all: Vec<Container> = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .chain(spec.containers)
        .collect();
    let find = |name: &str| {
        all.iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| anyhow!("the patched pod {} has no container {name}", pod.key()))
    };
    Ok(Some(Injected {
        init: find(INIT_NAME)?,
        proxy: find(PROXY_NAME)?,
    }))
}

/// What the downward API tells a pod's containers about the running pod.
pub struct Facts<'a> {
    /// The pod.
    pub pod: &'a cluster::Pod,
    /// Its node's addresses, primary first.
    pub node_ips: &'a [IpAddr],
}

impl Facts<'_> {
    fn field(&self, path: &str) -> Option<String> {
        let join = |ips: &[IpAddr]| {
            ips.iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        Some(match path {
            "metadata.name" => self.pod.name.clone(),
            "metadata.namespace" => self.pod.namespace.clone(),
            "status.podIP" => self.pod.ips.first()?.to_string(),
            "status.podIPs" => join(&self.pod.ips),
            "status.hostIP" => node_ip_for(self.pod, self.node_ips).to_string(),
            "status.hostIPs" => join(self.node_ips),
            _ => return None,
        })
    }
}

/// Expands `$(NAME)` references to variables defined before, as the kubelet does; `$$`
/// is a literal `$`, and an unknown reference stays as written.
fn expand(value: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|s| s.split_once(')'))
            .filter(|(name, _)| defined.contains_key(*name))
        {
            out.push_str(&defined[name]);
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment, resolved.
pub fn environment(c: &Container, facts: &Facts<'_>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for var in c.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            expand(v, &env)
        } else if let Some(field) = var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()) {
            facts.field(&field.field_path).ok_or_else(|| {
                anyhow!(
                    "container {}: the lab cannot resolve {} from {}",
                    c.name,
                    var.name,
                    field.field_path
                )
            })?
        } else {
            String::new()
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

/// The command that runs container `c` in `ns` as its spec says, with `binary` standing
/// for the image's palisade; `wrap` goes in front (e.g. `prlimit`).
pub fn command(
    ns: &Netns,
    binary: &Path,
    c: &Container,
    facts: &Facts<'_>,
    wrap: &[String],
) -> anyhow::Result<Command> {
    let env = environment(c, facts)?;
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    argv.extend(c.args.iter().flatten().map(|a| expand(a, &env)));
    match argv.first() {
        Some(first) if first == BINARY => {}
        other => bail!(
            "container {}: the lab runs only {BINARY}, not {other:?}",
            c.name
        ),
    }
    let sc = c.security_context.clone().unwrap_or_default();
    let mut setpriv: Vec<String> = Vec::new();
    if let Some(uid) = sc.run_as_user {
        setpriv.push(format!("--reuid={uid}"));
        setpriv.push(format!("--regid={}", sc.run_as_group.unwrap_or(uid)));
        setpriv.push("--clear-groups".into());
    }
    let drop_all = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.as_ref())
        .is_some_and(|d| d.iter().any(|d| d == "ALL"));
    let add: Vec<String> = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| format!("+{}", c.to_ascii_lowercase()))
        .collect();
    if drop_all {
        // Only the added capabilities exist for the container, as its bounding set: root
        // gets them at exec, a non-root process only through the image binary's file
        // capabilities (the runtime grants no ambient ones), as on a cluster.
        let set = std::iter::once("-all".to_owned())
            .chain(add.iter().cloned())
            .collect::<Vec<_>>()
            .join(",");
        setpriv.push(format!("--bounding-set={set}"));
    } else if !add.is_empty() {
        bail!(
            "container {}: the lab only runs containers that drop ALL capabilities",
            c.name
        );
    }
    if sc.allow_privilege_escalation == Some(false) {
        setpriv.push("--no-new-privs".into());
    }
    let program = wrap.first().map_or("setpriv", String::as_str);
    let mut cmd = ns.command(program);
    if !wrap.is_empty() {
        cmd.args(&wrap[1..]).arg("setpriv");
    }
    cmd.args(&setpriv)
        .arg(binary)
        .args(&argv[1..])
        .env_clear()
        .env("PATH", IMAGE_PATH)
        .envs(&env);
    Ok(cmd)
}

/// Runs a container's exec probe in `ns`: whether it succeeded.
pub fn probe(
    ns: &Netns,
    binary: &Path,
    c: &Container,
    which: &Option<k8s_openapi::api::core::v1::Probe>,
    facts: &Facts<'_>,
) -> io::Result<bool> {
    let Some(argv) = which
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
    else {
        return Err(io::Error::other(format!(
            "container {} has no exec probe",
            c.name
        )));
    };
    // Kubernetes runs exec probes in the container, as its user.
    let probe = Container {
        command: Some(argv),
        args: None,
        ..c.clone()
    };
    let mut cmd = command(ns, binary, &probe, facts, &[]).map_err(io::Error::other)?;
    Ok(cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?
        .success())
}
