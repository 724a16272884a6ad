//! Each controller replica says it is alive, and how many proxies it serves, in a Lease of
//! its own in the controller's namespace, renewed every few seconds: `palisade status`
//! reads them through the API server, with no route to the replicas needed. The Lease is
//! owned by the replica's pod, so it goes when the pod goes.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// The label every replica's Lease carries.
pub const LEASE_LABEL: &str = "palisade.dev/controller-replica";
/// The annotation holding the replica's open policy streams.
pub const STREAMS_ANNOTATION: &str = "palisade.dev/streams";
/// The annotation holding how many pods the replica has a policy for.
pub const PODS_ANNOTATION: &str = "palisade.dev/pods";
/// How often the Lease is renewed.
pub const RENEW: Duration = Duration::from_secs(10);
/// How long a Lease counts as held without renewal.
pub const LEASE_SECONDS: i32 = 30;

/// Which replica this is.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The controller's namespace.
    pub namespace: String,
    /// The replica's pod.
    pub pod: String,
    /// Its pod's UID, to own the Lease (`None`: the Lease outlives the pod).
    pub pod_uid: Option<String>,
}

/// The Lease name of a replica.
pub fn lease_name(pod: &str) -> String {
    format!("palisade-controller-{pod}")
}

/// The replica's Lease as of now.
pub fn lease(replica: &Replica, streams: usize, pods: usize, now: MicroTime) -> Lease {
    let owners = replica
        .pod_uid
        .as_ref()
        .map(|uid| json!([{"apiVersion": "v1", "kind": "Pod", "name": replica.pod, "uid": uid}]));
    // Built from fixed fields: always a valid Lease.
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(&replica.pod),
            "namespace": replica.namespace,
            "labels": {LEASE_LABEL: "true"},
            "annotations": {STREAMS_ANNOTATION: streams.to_string(), PODS_ANNOTATION: pods.to_string()},
            "ownerReferences": owners,
        },
        "spec": {
            "holderIdentity": replica.pod,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now,
        },
    }))
    .expect("a Lease")
}

/// Renews the replica's Lease forever; `count` gives the open streams and known pods.
pub async fn run(client: kube::Client, replica: Replica, count: impl Fn() -> (usize, usize)) {
    let api: kube::Api<Lease> = kube::Api::namespaced(client, &replica.namespace);
    let params = PatchParams::apply("palisade-controller").force();
    let name = lease_name(&replica.pod);
    loop {
        let (streams, pods) = count();
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let lease = lease(&replica, streams, pods, now);
        if let Err(e) = api.patch(&name, &params, &Patch::Apply(&lease)).await {
            tracing::warn!(lease = %name, error = %e, "cannot renew the replica's Lease");
        }
        tokio::time::sleep(RENEW).await;
    }
}
