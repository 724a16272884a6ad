//! The Kubernetes source: kube-runtime watchers on Namespaces, Pods, Services,
//! EndpointSlices and NetworkPolicies, and on PalisadePolicies and CiliumNetworkPolicies
//! while their CustomResourceDefinitions exist (they may be installed, or removed, at any
//! time). Each object is read by the same code as a manifest file
//! ([`palisade_policy::manifest::read_object`]), so an invalid one is refused with the same
//! message, and its last valid version stays in force.
//!
//! The compiler holds what palisade needs of each object, so the watchers keep no store of
//! their own beyond each object's resourceVersion: 10,000 pods cost a few megabytes, not
//! the hundreds their API objects would. A relist (after a 410 Gone, or a watch that
//! cannot resume) is taken whole at its end, so that a policy is never compiled from half
//! a list.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::watcher::{self, watcher, Event as Watched};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use palisade_policy::cluster::Cluster;
use palisade_policy::document::Node;
use palisade_policy::manifest::{
    read_object, Entry, FieldError, Notice, Object, ObjectKey, ObjectKind, Read, Report,
};
use palisade_policy::policy::{Policy, PolicyKind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::auth::PodUids;
use crate::metrics;
use crate::source::{Event, Events};

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the Kubernetes API (no usable kubeconfig or in-cluster ServiceAccount): {0}")]
pub struct ClientError(#[from] kube::Error);

/// The Kubernetes client every part of the controller shares: from `KUBECONFIG` or
/// `~/.kube/config`, else from the pod's ServiceAccount, as kube-rs finds them.
pub async fn client() -> Result<kube::Client, ClientError> {
    Ok(kube::Client::try_default().await?)
}

/// Why a namespace's mode could not be set.
#[derive(Debug, thiserror::Error)]
#[error("cannot set {annotation} on namespace {namespace}: {why}")]
pub struct ModeError {
    annotation: &'static str,
    namespace: String,
    why: String,
}

/// Sets a namespace's `palisade.dev/mode` annotation (`enforce` or `audit`) with a merge
/// patch, which touches nothing else; returns the mode it had.
pub async fn set_namespace_mode(
    client: kube::Client,
    namespace: &str,
    mode: &str,
) -> Result<Option<String>, ModeError> {
    let error = |e: kube::Error| ModeError {
        annotation: palisade_policy::cluster::MODE_ANNOTATION,
        namespace: namespace.to_owned(),
        // The API server's own words, not the whole Status.
        why: match e {
            kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
            e => e.to_string(),
        },
    };
    let api: Api<Namespace> = Api::all(client);
    let before = api.get(namespace).await.map_err(error)?;
    let patch = serde_json::json!({"metadata": {"annotations": {
        palisade_policy::cluster::MODE_ANNOTATION: mode
    }}});
    api.patch(
        namespace,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map_err(error)?;
    Ok(before
        .annotations()
        .get(palisade_policy::cluster::MODE_ANNOTATION)
        .cloned())
}

/// A custom resource palisade reads when its CRD exists.
struct CustomKind {
    kind: PolicyKind,
    group: &'static str,
    /// The version [`load_cluster`] lists (the watchers read the CRD's storage version).
    version: &'static str,
    plural: &'static str,
}

/// The custom resources palisade reads, when their CRDs exist.
const CUSTOM: [CustomKind; 2] = [
    CustomKind {
        kind: PolicyKind::PalisadePolicy,
        group: "palisade.dev",
        version: "v1alpha1",
        plural: "palisadepolicies",
    },
    CustomKind {
        kind: PolicyKind::CiliumNetworkPolicy,
        group: "cilium.io",
        version: "v2",
        plural: "ciliumnetworkpolicies",
    },
];

/// Counts the watchers whose first list is not complete; the source is synced at zero.
struct Syncing {
    pending: Mutex<usize>,
    events: Events,
}

impl Syncing {
    fn add(&self) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    async fn done(&self) {
        let zero = {
            let mut n = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            *n -= 1;
            *n == 0
        };
        if zero {
            let _ = self.events.send(Event::Synced).await;
        }
    }
}

/// Watches every kind, forever.
pub async fn watch(client: kube::Client, events: Events, uids: Arc<PodUids>) {
    let syncing = Arc::new(Syncing {
        // The core kinds and the CRD watchers; each CRD present adds its objects' watcher.
        pending: Mutex::new(5 + CUSTOM.len()),
        events: events.clone(),
    });
    let core = |kind| Watcher {
        kind,
        events: events.clone(),
        syncing: Some(syncing.clone()),
        uids: None,
        types: None,
    };
    let pods = Watcher {
        uids: Some(uids),
        ..core(ObjectKind::Pod)
    };
    let mut tasks = vec![
        tokio::spawn(core(ObjectKind::Namespace).run(
            Api::<Namespace>::all(client.clone()),
            std::future::pending(),
        )),
        tokio::spawn(pods.run(Api::<Pod>::all(client.clone()), std::future::pending())),
        tokio::spawn(
            core(ObjectKind::Service)
                .run(Api::<Service>::all(client.clone()), std::future::pending()),
        ),
        tokio::spawn(core(ObjectKind::EndpointSlice).run(
            Api::<EndpointSlice>::all(client.clone()),
            std::future::pending(),
        )),
        tokio::spawn(core(ObjectKind::Policy(PolicyKind::NetworkPolicy)).run(
            Api::<NetworkPolicy>::all(client.clone()),
            std::future::pending(),
        )),
    ];
    for c in CUSTOM {
        let custom = Custom {
            client: client.clone(),
            kind: c.kind,
            crd: format!("{}.{}", c.plural, c.group),
            watcher: core(ObjectKind::Policy(c.kind)),
        };
        tasks.push(tokio::spawn(custom.run()));
    }
    for t in tasks {
        if let Err(e) = t.await {
            tracing::error!(error = %e, "a watcher stopped");
        }
    }
}

/// One kind's watcher: it sends each object's changes to the compile loop.
#[derive(Clone)]
struct Watcher {
    kind: ObjectKind,
    events: Events,
    /// Told when the first list is complete, if it counts towards the source's first sync.
    syncing: Option<Arc<Syncing>>,
    /// Where pods' UIDs go (the Pod watcher only).
    uids: Option<Arc<PodUids>>,
    /// The `apiVersion` and `kind` of a custom resource: the items of a list carry none,
    /// and a dynamic object has only what it was given.
    types: Option<(String, String)>,
}

/// What a watcher knows of one object.
struct Known {
    resource_version: Option<String>,
    valid: bool,
}

impl Watcher {
    fn key(&self, namespace: Option<String>, name: String) -> ObjectKey {
        ObjectKey {
            kind: self.kind,
            namespace: match self.kind {
                ObjectKind::Namespace => String::new(),
                _ => namespace.unwrap_or_else(|| "default".into()),
            },
            name,
        }
    }

    /// Watches until `stop` fires (or forever), then takes back every object it sent.
    async fn run<K>(self, api: Api<K>, stop: impl std::future::Future<Output = ()> + Send)
    where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
    {
        let label = kind_label(self.kind);
        let mut known: HashMap<ObjectKey, Known> = HashMap::new();
        let mut relist: Option<HashMap<ObjectKey, K>> = None;
        let mut synced = false;
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures_util::pin_mut!(stream);
        futures_util::pin_mut!(stop);
        loop {
            let event = tokio::select! {
                e = stream.next() => e,
                () = &mut stop => None,
            };
            let Some(event) = event else { break };
            match event {
                Ok(Watched::Init) => relist = Some(HashMap::new()),
                Ok(Watched::InitApply(o)) => {
                    let key = self.key(o.namespace(), o.name_any());
                    relist.get_or_insert_with(HashMap::new).insert(key, o);
                }
                Ok(Watched::InitDone) => {
                    let listed = relist.take().unwrap_or_default();
                    let gone: Vec<ObjectKey> = known
                        .keys()
                        .filter(|k| !listed.contains_key(*k))
                        .cloned()
                        .collect();
                    for key in gone {
                        self.remove(&mut known, key).await;
                    }
                    for (key, o) in listed {
                        self.apply(&mut known, key, &o).await;
                    }
                    if !synced {
                        synced = true;
                        tracing::info!(kind = label, objects = known.len(), "listed");
                        if let Some(s) = &self.syncing {
                            s.done().await;
                        }
                    }
                }
                Ok(Watched::Apply(o)) => {
                    let key = self.key(o.namespace(), o.name_any());
                    self.apply(&mut known, key, &o).await;
                }
                Ok(Watched::Delete(o)) => {
                    let key = self.key(o.namespace(), o.name_any());
                    self.remove(&mut known, key).await;
                }
                Err(e) => watch_error(label, &e),
            }
        }
        for key in known.keys().cloned().collect::<Vec<_>>() {
            self.remove(&mut known, key).await;
        }
        if let (false, Some(s)) = (synced, &self.syncing) {
            s.done().await;
        }
    }

    async fn apply<K: Resource + Serialize>(
        &self,
        known: &mut HashMap<ObjectKey, Known>,
        key: ObjectKey,
        object: &K,
    ) {
        let meta = object.meta();
        let rv = meta.resource_version.clone();
        if rv.is_some() && known.get(&key).and_then(|k| k.resource_version.as_ref()) == rv.as_ref()
        {
            return;
        }
        let Some(read) = read_api_object(object, self.types.as_ref()) else {
            // A pod that ran to completion has given its address back.
            self.remove(known, key).await;
            return;
        };
        if let Some(uids) = &self.uids {
            uids.set(&pod_key(&key), meta.uid.clone());
        }
        let was_valid = known.get(&key).is_none_or(|k| k.valid);
        match read {
            Read::Object { object, .. } => {
                if !was_valid {
                    ::metrics::gauge!(metrics::INVALID).decrement(1.0);
                }
                known.insert(
                    key,
                    Known {
                        resource_version: rv,
                        valid: true,
                    },
                );
                let _ = self.events.send(Event::Apply(object)).await;
            }
            Read::Invalid { what, errors } => {
                let keeping = if known.contains_key(&key) {
                    "; its last valid version stays in force"
                } else {
                    "; it is left out"
                };
                for e in &errors {
                    tracing::warn!(
                        "{what} (resourceVersion {}): {}{}{keeping}",
                        rv.as_deref().unwrap_or("?"),
                        if e.path.is_empty() {
                            String::new()
                        } else {
                            format!("{}: ", e.path)
                        },
                        e.message
                    );
                }
                if was_valid {
                    ::metrics::gauge!(metrics::INVALID).increment(1.0);
                }
                let entry = known.entry(key).or_insert(Known {
                    resource_version: None,
                    valid: false,
                });
                entry.resource_version = rv;
                entry.valid = false;
            }
            Read::Skipped { .. } | Read::Syntax(_) => {}
        }
    }

    async fn remove(&self, known: &mut HashMap<ObjectKey, Known>, key: ObjectKey) {
        if let Some(k) = known.remove(&key) {
            if !k.valid {
                ::metrics::gauge!(metrics::INVALID).decrement(1.0);
            }
        }
        if let Some(uids) = &self.uids {
            uids.set(&pod_key(&key), None);
        }
        let _ = self.events.send(Event::Remove(key)).await;
    }
}

/// Counts and reports a watch error; the watcher retries it with backoff.
fn watch_error(kind: &'static str, e: &watcher::Error) {
    let status = |e: &kube::Error| match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    };
    let code = match e {
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => status(e),
        watcher::Error::NoResourceVersion => None,
    };
    ::metrics::counter!(metrics::WATCH_ERRORS, "kind" => kind).increment(1);
    match code {
        // The API server's history moved past the watch: the watcher lists again.
        Some(410) => tracing::info!(kind, "watch history expired (410 Gone); listing again"),
        Some(401 | 403) => tracing::error!(
            kind, error = %e,
            "the controller may not list or watch {kind}: grant it get, list and watch (see the install's ClusterRole); retrying"
        ),
        _ => tracing::warn!(kind, error = %e, "watch failed; retrying with backoff"),
    }
}

/// An API object read by the same code as a manifest; `None` for a pod that ran to
/// completion (`Succeeded`, `Failed`), which is left out: its address may already be another
/// pod's. `types` are a custom resource's `apiVersion` and `kind`, which a dynamic object
/// listed or watched does not carry.
fn read_api_object<K: Serialize>(object: &K, types: Option<&(String, String)>) -> Option<Read> {
    let mut json = match serde_json::to_value(object) {
        Ok(json) => json,
        Err(e) => {
            return Some(Read::Invalid {
                what: "an API object".into(),
                errors: vec![FieldError {
                    line: 0,
                    path: String::new(),
                    message: format!("cannot be read as JSON: {e}"),
                }],
            })
        }
    };
    if let (Some((api_version, kind)), Some(map)) = (types, json.as_object_mut()) {
        map.insert("apiVersion".into(), api_version.clone().into());
        map.insert("kind".into(), kind.clone().into());
    }
    let phase = json.pointer("/status/phase").and_then(|p| p.as_str());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    Some(read_object(&Node::from_json(&json)))
}

/// Why the cluster could not be read from the API.
#[derive(Debug, thiserror::Error)]
#[error("cannot list {resource} through the Kubernetes API: {why}{hint}")]
pub struct LoadError {
    resource: &'static str,
    why: String,
    hint: &'static str,
}

impl LoadError {
    fn new(resource: &'static str, e: kube::Error) -> Self {
        let (why, hint) = match e {
            kube::Error::Api(s) => {
                let hint = match s.code {
                    401 | 403 => {
                        "; reading the cluster takes list on namespaces, pods, services, \
                         endpointslices, networkpolicies, palisadepolicies and \
                         ciliumnetworkpolicies"
                    }
                    _ => "",
                };
                (format!("{} ({})", s.message, s.code), hint)
            }
            e => (e.to_string(), ""),
        };
        LoadError {
            resource,
            why,
            hint,
        }
    }
}

/// What the lists gave so far.
#[derive(Default)]
struct Loading {
    objects: Vec<Object>,
    report: Report,
}

impl Loading {
    /// Lists every object of one kind and reads each; a 404 (a kind the API server does not
    /// serve) is returned as is.
    async fn list<K>(
        &mut self,
        api: Api<K>,
        types: Option<&(String, String)>,
    ) -> Result<(), kube::Error>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    {
        for item in api.list(&ListParams::default()).await? {
            let Some(read) = read_api_object(&item, types) else {
                continue;
            };
            // Objects from the API have no file: messages name the object and field only.
            let entry = Entry { line: 0, read };
            self.report.record("", &entry);
            if let Read::Object { object, .. } = entry.read {
                self.objects.push(object);
            }
        }
        Ok(())
    }

    /// Lists every object of a built-in kind (`resource`, its plural) and reads each.
    async fn all<K>(
        &mut self,
        client: &kube::Client,
        resource: &'static str,
    ) -> Result<(), LoadError>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug,
        K::DynamicType: Default,
    {
        self.list(Api::<K>::all(client.clone()), None)
            .await
            .map_err(|e| LoadError::new(resource, e))
    }

    /// Lists the NetworkPolicies, and the PalisadePolicies and CiliumNetworkPolicies when
    /// their API exists (a notice says which kind was not there).
    async fn policies(&mut self, client: &kube::Client) -> Result<(), LoadError> {
        self.all::<NetworkPolicy>(client, "networkpolicies").await?;
        for c in CUSTOM {
            let resource = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(c.group, c.version, c.kind.as_str()),
                c.plural,
            );
            let types = (resource.api_version.clone(), resource.kind.clone());
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            match self.list(api, Some(&types)).await {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => self.report.notices.push(Notice {
                    file: String::new(),
                    line: 0,
                    message: format!(
                        "skipped {}: the API server does not serve {}/{} (is the \
                         CustomResourceDefinition {}.{} installed?)",
                        c.kind.as_str(),
                        types.0,
                        c.plural,
                        c.plural,
                        c.group
                    ),
                }),
                Err(e) => return Err(LoadError::new(c.plural, e)),
            }
        }
        Ok(())
    }
}

/// Every policy of the cluster (NetworkPolicies, and PalisadePolicies and
/// CiliumNetworkPolicies where their API exists), read once as [`load_cluster`] reads them,
/// with the objects left out and the kinds skipped.
pub async fn load_policies(client: &kube::Client) -> Result<(Vec<Policy>, Report), LoadError> {
    let mut loading = Loading::default();
    loading.policies(client).await?;
    let policies = loading
        .objects
        .into_iter()
        .flat_map(|o| match o {
            Object::Policies(p) => p,
            _ => Vec::new(),
        })
        .collect();
    Ok((policies, loading.report))
}

/// The cluster as the API server holds it now, read once, as the watchers read it on their
/// first list and as `palisade simulate` reads manifests: every Namespace, Pod (those that
/// ran to completion left out), Service, EndpointSlice and NetworkPolicy, and the
/// PalisadePolicies and CiliumNetworkPolicies when the API server serves them (a notice
/// says which kind was skipped). An invalid object is left out and reported as
/// `Kind namespace/name: field: what is wrong`; pods the scheduler has not yet given an
/// address keep none.
pub async fn load_cluster(client: &kube::Client) -> Result<(Cluster, Report), LoadError> {
    let mut loading = Loading::default();
    loading.all::<Namespace>(client, "namespaces").await?;
    loading.all::<Pod>(client, "pods").await?;
    loading.all::<Service>(client, "services").await?;
    loading
        .all::<EndpointSlice>(client, "endpointslices")
        .await?;
    loading.policies(client).await?;
    let mut cluster = Cluster::default();
    for object in loading.objects {
        cluster.add(object);
    }
    cluster.finish();
    Ok((cluster, loading.report))
}

fn pod_key(key: &ObjectKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

fn kind_label(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Namespace => "Namespace",
        ObjectKind::Pod => "Pod",
        ObjectKind::Service => "Service",
        ObjectKind::EndpointSlice => "EndpointSlice",
        ObjectKind::Policy(k) => k.as_str(),
    }
}

/// A custom resource kind, watched while its CRD exists.
struct Custom {
    client: kube::Client,
    kind: PolicyKind,
    /// The CRD's name, `plural.group`.
    crd: String,
    watcher: Watcher,
}

/// Where a custom resource is served: its group, version and plural.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    resource: ApiResource,
}

/// The version objects are read at: the storage version if it is served, else the first
/// served; `None` while the CRD is not established.
fn served(crd: &CustomResourceDefinition) -> Option<Served> {
    let established = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
    if !established || crd.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = &crd.spec;
    let version = spec
        .versions
        .iter()
        .find(|v| v.served && v.storage)
        .or_else(|| spec.versions.iter().find(|v| v.served))?;
    Some(Served {
        resource: ApiResource {
            group: spec.group.clone(),
            version: version.name.clone(),
            api_version: format!("{}/{}", spec.group, version.name),
            kind: spec.names.kind.clone(),
            plural: spec.names.plural.clone(),
        },
    })
}

impl Custom {
    /// Follows the CRD: starts the objects' watcher when it is established, stops it (and
    /// takes back every object) when it goes.
    async fn run(self) {
        let api = Api::<CustomResourceDefinition>::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.crd));
        let stream = watcher(api, config).default_backoff();
        futures_util::pin_mut!(stream);
        let mut running: Option<(Served, oneshot::Sender<()>, tokio::task::JoinHandle<()>)> = None;
        let mut synced = false;
        let mut listed: Option<Option<Served>> = None;
        let label = self.kind.as_str();
        while let Some(event) = stream.next().await {
            let now = match event {
                Ok(Watched::Init) => {
                    listed = Some(None);
                    continue;
                }
                Ok(Watched::InitApply(crd)) => {
                    listed = Some(served(&crd));
                    continue;
                }
                Ok(Watched::InitDone) => listed.take().flatten(),
                Ok(Watched::Apply(crd)) => served(&crd),
                Ok(Watched::Delete(_)) => None,
                Err(e) => {
                    watch_error("CustomResourceDefinition", &e);
                    continue;
                }
            };
            if running.as_ref().map(|r| &r.0) != now.as_ref() {
                if let Some((_, stop, task)) = running.take() {
                    tracing::info!(kind = label, "CRD gone or changed; dropping its objects");
                    let _ = stop.send(());
                    let _ = task.await;
                }
                if let Some(served) = now {
                    tracing::info!(kind = label, version = %served.resource.api_version, "CRD established; watching its objects");
                    let (tx, rx) = oneshot::channel();
                    let api = Api::<DynamicObject>::all_with(self.client.clone(), &served.resource);
                    let mut watcher = self.watcher.clone();
                    watcher.types = Some((
                        served.resource.api_version.clone(),
                        served.resource.kind.clone(),
                    ));
                    // Objects there at start count towards the source's first sync.
                    watcher.syncing = match (&self.watcher.syncing, synced) {
                        (Some(s), false) => {
                            s.add();
                            Some(s.clone())
                        }
                        _ => None,
                    };
                    let stop = async move {
                        let _ = rx.await;
                    };
                    let task = tokio::spawn(watcher.run(api, stop));
                    running = Some((served, tx, task));
                }
            }
            if !synced {
                synced = true;
                if let Some(s) = &self.watcher.syncing {
                    s.done().await;
                }
            }
        }
    }
}
