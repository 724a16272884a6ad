//! `palisade status`: what palisade enforces on a cluster, read through the API server
//! (kubeconfig or in-cluster): per namespace whether injection is on, its mode, how many
//! pods run a ready proxy, and which pods some policy selects but no proxy enforces; then
//! the controller replicas, from the Lease each renews, with the streams it serves.
//! Exits 1 when a selected pod has no ready proxy or no replica is alive.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use palisade_controller::heartbeat::{LEASE_LABEL, PODS_ANNOTATION, STREAMS_ANNOTATION};
use palisade_controller::inject::annotations::{INJECT, MODE};
use palisade_controller::inject::containers::PROXY_NAME;
use palisade_policy::policy::Policy;
use serde::Serialize;

/// Arguments of `palisade status`.
#[derive(clap::Args)]
pub struct Args {
    /// The namespace palisade's controller runs in.
    #[arg(long, short = 'n', default_value = "palisade-system")]
    namespace: String,
    /// A table, or JSON.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: palisade::matrix::Output,
}

/// One namespace, as `status` reports it.
#[derive(Debug, Serialize)]
struct NamespaceStatus {
    name: String,
    /// `namespace` (label), `annotated pods`, or `off`.
    injection: &'static str,
    mode: String,
    pods: usize,
    proxied: usize,
    /// Pods some policy selects that have no ready proxy: nothing enforces it there.
    unenforced: Vec<String>,
}

/// One controller replica.
#[derive(Debug, Serialize)]
pub struct ReplicaStatus {
    /// The replica's pod.
    pub pod: String,
    streams: Option<u64>,
    pods: Option<u64>,
    /// Seconds since the replica last renewed its Lease.
    renewed_seconds_ago: Option<i64>,
    /// Whether its Lease is still held.
    pub alive: bool,
}

#[derive(Debug, Serialize)]
struct Status {
    namespaces: Vec<NamespaceStatus>,
    replicas: Vec<ReplicaStatus>,
}

/// Whether the pod's proxy (native sidecar or container) reports ready.
fn proxy_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .any(|c| c.name == PROXY_NAME && c.ready)
}

fn running(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let host = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    !host && matches!(phase, Some("Running") | Some("Pending"))
}

fn namespace_status(ns: &Namespace, pods: &[&Pod], policies: &[Policy]) -> NamespaceStatus {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let label = ns.metadata.labels.as_ref().and_then(|l| l.get(INJECT));
    let annotated = pods.iter().any(|p| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECT))
            .is_some_and(|v| v == "enabled")
    });
    let injection = match (label.map(String::as_str), annotated) {
        (Some("enabled"), _) => "namespace",
        (_, true) => "annotated pods",
        _ => "off",
    };
    let mode = ns
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MODE))
        .cloned()
        .unwrap_or_else(|| "enforce".into());
    let here: Vec<&Policy> = policies.iter().filter(|p| p.id.namespace == name).collect();
    let mut unenforced = Vec::new();
    let mut proxied = 0;
    for p in pods {
        if proxy_ready(p) {
            proxied += 1;
            continue;
        }
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if here
            .iter()
            .any(|policy| policy.pod_selector.matches(&labels))
        {
            unenforced.push(format!(
                "{name}/{}",
                p.metadata.name.as_deref().unwrap_or("")
            ));
        }
    }
    NamespaceStatus {
        name,
        injection,
        mode,
        pods: pods.len(),
        proxied,
        unenforced,
    }
}

/// A replica as its Lease says.
pub fn replica_status(lease: &Lease, now: k8s_openapi::jiff::Timestamp) -> ReplicaStatus {
    let annotation = |k: &str| {
        lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .and_then(|v| v.parse().ok())
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let age = spec.renew_time.map(|t| now.duration_since(t.0).as_secs());
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(30));
    ReplicaStatus {
        pod: spec.holder_identity.unwrap_or_default(),
        streams: annotation(STREAMS_ANNOTATION),
        pods: annotation(PODS_ANNOTATION),
        renewed_seconds_ago: age,
        alive: age.is_some_and(|a| a <= duration),
    }
}

/// The Leases of the controller replicas in `namespace`.
pub async fn replica_leases(
    client: kube::Client,
    namespace: &str,
) -> anyhow::Result<kube::api::ObjectList<Lease>> {
    kube::Api::<Lease>::namespaced(client, namespace)
        .list(&ListParams::default().labels(LEASE_LABEL))
        .await
        .with_context(|| format!("listing the controller replicas' Leases in {namespace}"))
}

async fn gather(args: &Args) -> anyhow::Result<Status> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API configuration (kubeconfig or in-cluster)")?;
    let namespaces = kube::Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing namespaces")?;
    let pods = kube::Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing pods")?;
    // Invalid policies are not enforced, so they select nothing: only the valid ones count.
    let (policies, _) = palisade_controller::kubernetes::load_policies(&client).await?;
    let leases = replica_leases(client, &args.namespace).await?;

    let mut by_namespace: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in pods.items.iter().filter(|p| running(p)) {
        by_namespace
            .entry(p.metadata.namespace.clone().unwrap_or_default())
            .or_default()
            .push(p);
    }
    let mut out: Vec<NamespaceStatus> = namespaces
        .items
        .iter()
        .map(|ns| {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let pods = by_namespace
                .get(&name)
                .map(Vec::as_slice)
                .unwrap_or_default();
            namespace_status(ns, pods, &policies)
        })
        .filter(|s| s.injection != "off" || s.proxied > 0 || !s.unenforced.is_empty())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut replicas: Vec<ReplicaStatus> = leases
        .items
        .iter()
        .map(|l| replica_status(l, now))
        .collect();
    replicas.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(Status {
        namespaces: out,
        replicas,
    })
}

fn print_table(s: &Status, controller_ns: &str) {
    println!(
        "{:<24} {:<15} {:<8} {:>5} {:>8}  SELECTED BUT NOT ENFORCED",
        "NAMESPACE", "INJECTION", "MODE", "PODS", "PROXIED"
    );
    for n in &s.namespaces {
        let gaps = if n.unenforced.is_empty() {
            "-".to_owned()
        } else {
            n.unenforced.join(", ")
        };
        println!(
            "{:<24} {:<15} {:<8} {:>5} {:>8}  {gaps}",
            n.name, n.injection, n.mode, n.pods, n.proxied
        );
    }
    println!("\ncontroller replicas in {controller_ns}:");
    if s.replicas.is_empty() {
        println!("  none has renewed its Lease: is the controller running?");
    }
    println!("{:<44} {:>8} {:>6}  RENEWED", "REPLICA", "STREAMS", "PODS");
    for r in &s.replicas {
        let show = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
        let renewed = match (r.renewed_seconds_ago, r.alive) {
            (Some(a), true) => format!("{a}s ago"),
            (Some(a), false) => format!("{a}s ago (gone)"),
            (None, _) => "never".into(),
        };
        println!(
            "{:<44} {:>8} {:>6}  {renewed}",
            r.pod,
            show(r.streams),
            show(r.pods)
        );
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(gather(&args))?;
    match args.output {
        palisade::matrix::Output::Table => print_table(&status, &args.namespace),
        palisade::matrix::Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    let gaps = status.namespaces.iter().any(|n| !n.unenforced.is_empty());
    let alive = status.replicas.iter().any(|r| r.alive);
    Ok(if gaps || !alive {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
