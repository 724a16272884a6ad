//! Sidecar injection, decided without a server: from a pod, its namespace and the
//! installation's options, either a JSON patch that adds `palisade init` and
//! `palisade proxy` to the pod, or a reason to leave it alone, or a refusal that says why
//! and how to fix it. The webhook and `palisade lab` both go through [`review`].

pub mod annotations;
pub mod bypass;
pub mod containers;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod, ResourceRequirements};
use serde_json::{json, Value};

pub use annotations::{FailMode, Mode, PodSettings};
pub use containers::SidecarKind;

/// How the installation injects pods.
#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// The image init and the proxy run from (the one palisade image).
    pub image: String,
    /// Its pull policy, if not the cluster's default.
    pub pull_policy: Option<String>,
    /// The controller's policy stream, as proxies reach it.
    pub controller: String,
    /// The CA (PEM) that signs the policy stream's certificate, which proxies trust.
    pub ca: Option<String>,
    /// Native sidecar, or a first regular container on API servers without them.
    pub sidecar: SidecarKind,
    /// The fail mode of proxies whose pod does not set `palisade.dev/fail-mode`.
    pub fail_mode: FailMode,
    /// How long proxies hold new flows before their first policy (the proxy's default if
    /// `None`).
    pub hold: Option<String>,
    /// Whether proxies log allowed flows and requests too, not only denied ones.
    pub log_allowed: bool,
    /// How long proxies keep DNS records usable after their TTL ran out, for pods that do
    /// not set `palisade.dev/dns-grace` (the proxy's default if `None`).
    pub dns_grace: Option<String>,
    /// The port of injected proxies' metrics listener (`/metrics` on the pod's addresses,
    /// left out of redirection, announced with `prometheus.io/*` annotations); `None`: none,
    /// except in pods whose `palisade.dev/metrics: "true"` asks for one.
    pub metrics_port: Option<u16>,
    /// What the init container requests.
    pub init_resources: ResourceRequirements,
    /// What the proxy requests.
    pub proxy_resources: ResourceRequirements,
}

impl InjectOptions {
    /// Options with the default resources.
    pub fn new(image: String, controller: String, sidecar: SidecarKind) -> Self {
        Self {
            image,
            pull_policy: None,
            controller,
            ca: None,
            sidecar,
            fail_mode: FailMode::Closed,
            hold: None,
            log_allowed: false,
            dns_grace: None,
            metrics_port: Some(containers::METRICS_PORT),
            init_resources: containers::default_resources(containers::Part::Init),
            proxy_resources: containers::default_resources(containers::Part::Proxy),
        }
    }
}

/// What to do with a pod.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Admit it unchanged.
    Leave {
        /// Why it gets no proxy (or why it already has one).
        reason: String,
        /// What the pod's owner should know.
        warnings: Vec<String>,
    },
    /// Admit it with this patch.
    Inject {
        /// JSON patch (RFC 6902) against the pod as submitted.
        patch: json_patch::Patch,
        /// What the pod's owner should know (bypass risks in audit mode).
        warnings: Vec<String>,
    },
    /// Refuse it.
    Refuse {
        /// Why, and how to fix it.
        message: String,
    },
}

/// The pod's `namespace/name` (or `generateName` followed by `*`) for messages.
pub fn pod_name(pod: &Pod) -> String {
    let m = &pod.metadata;
    let name = match (&m.name, &m.generate_name) {
        (Some(n), _) if !n.is_empty() => n.clone(),
        (_, Some(g)) => format!("{g}*"),
        _ => "<unnamed>".into(),
    };
    format!("{}/{name}", m.namespace.as_deref().unwrap_or("default"))
}

/// Whether palisade's containers are already in the pod.
fn injected(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let named = |c: &Container| c.name == containers::INIT_NAME || c.name == containers::PROXY_NAME;
    spec.is_some_and(|s| {
        s.containers.iter().any(named)
            || s.init_containers
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(named)
    })
}

/// The annotations Prometheus' Kubernetes discovery reads.
const PROMETHEUS: [&str; 3] = [
    "prometheus.io/scrape",
    "prometheus.io/port",
    "prometheus.io/path",
];

/// Escapes a key for a JSON pointer (RFC 6901).
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Decides what to do with `pod`, in namespace `ns` (when it could be read).
pub fn review(pod: &Pod, ns: Option<&Namespace>, options: &InjectOptions) -> Decision {
    let name = pod_name(pod);
    let mut warnings = Vec::new();
    if !annotations::wants_injection(pod, ns, &mut warnings) {
        return Decision::Leave {
            reason: "neither the pod nor its namespace asks for injection".into(),
            warnings,
        };
    }
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        warnings.push(format!(
            "pod {name} uses the node's network (hostNetwork): palisade cannot put a proxy \
             there, so nothing enforces its policies; it is admitted without one"
        ));
        return Decision::Leave {
            reason: "host network".into(),
            warnings,
        };
    }
    let settings = match annotations::read(pod, ns) {
        Ok(s) => s,
        Err(errors) => {
            return Decision::Refuse {
                message: format!("pod {name}: {}", errors.join("; ")),
            }
        }
    };
    let conflicts = bypass::port_conflicts(pod);
    if !conflicts.is_empty() {
        return Decision::Refuse {
            message: format!("pod {name}: {}", conflicts.join("; ")),
        };
    }
    // Checked even on a pod already injected: another webhook may have added a container
    // since (the injector is reinvoked then).
    let bypasses = bypass::findings(pod);
    if !bypasses.is_empty() {
        match settings.mode {
            Mode::Enforce => {
                return Decision::Refuse {
                    message: format!(
                        "pod {name} could bypass its network policy: {}. Or, to admit it and \
                         only report would-be denials, set annotation palisade.dev/mode: audit",
                        bypasses.join("; ")
                    ),
                }
            }
            Mode::Audit => warnings.extend(bypasses.into_iter().map(|b| {
                format!("pod {name} could bypass its network policy (admitted in audit mode): {b}")
            })),
        }
    }
    if injected(pod) {
        return Decision::Leave {
            reason: "already injected".into(),
            warnings,
        };
    }
    let restarts = spec.restart_policy.as_deref().unwrap_or("Always");
    if options.sidecar == SidecarKind::Container && restarts != "Always" {
        let why = format!(
            "pod {name} has restartPolicy {restarts} (a Job's pod) and this API server has no \
             native sidecars (Kubernetes 1.29 or later): a proxy container would keep it \
             running after its work is done"
        );
        return match settings.mode {
            Mode::Enforce => Decision::Refuse {
                message: format!(
                    "{why}. Upgrade the cluster, or set annotation palisade.dev/inject: \
                     disabled on this pod (nothing will enforce its policies), or \
                     palisade.dev/mode: audit to admit it without a proxy"
                ),
            },
            Mode::Audit => {
                warnings.push(format!(
                    "{why}; it is admitted without a proxy (audit mode), so nothing enforces \
                     its policies"
                ));
                Decision::Leave {
                    reason: "job without native sidecars".into(),
                    warnings,
                }
            }
        };
    }

    let init = containers::init(&settings, options);
    let proxy = containers::proxy(&settings, options, options.sidecar);
    let mut ops: Vec<Value> = Vec::new();
    let has_inits = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
    let mut inits = vec![json!(init)];
    if options.sidecar == SidecarKind::Native {
        inits.push(json!(proxy));
    }
    if has_inits {
        // Ahead of the pod's own init containers, so their traffic goes through the proxy.
        for (i, c) in inits.into_iter().enumerate() {
            ops.push(json!({"op": "add", "path": format!("/spec/initContainers/{i}"), "value": c}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": inits}));
    }
    if options.sidecar == SidecarKind::Container {
        ops.push(json!({"op": "add", "path": "/spec/containers/0", "value": proxy}));
    }
    if spec.volumes.is_none() {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": []}));
    }
    for v in containers::volumes() {
        ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
    }
    let existing = pod.metadata.annotations.clone().unwrap_or_default();
    if pod.metadata.annotations.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    let mut annotate = |key: &str, value: &str| {
        ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", pointer_key(key)),
            "value": value,
        }));
    };
    annotate(annotations::INJECTED, &options.image);
    // Prometheus finds the proxy's metrics as Istio's are found, unless the pod already
    // says where its own metrics are.
    let scraped = PROMETHEUS.iter().any(|k| existing.contains_key(*k));
    if let (false, Some(port)) = (scraped, containers::metrics_port(&settings, options)) {
        let [scrape, port_key, path] = PROMETHEUS;
        annotate(scrape, "true");
        annotate(port_key, &port.to_string());
        annotate(path, "/metrics");
    }
    // `kubectl logs` and `exec` keep going to the app, not to the proxy.
    const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
    if let (false, Some(first)) = (
        existing.contains_key(DEFAULT_CONTAINER),
        spec.containers.first(),
    ) {
        annotate(DEFAULT_CONTAINER, &first.name);
    }
    // Built from values this function serialised: it always has the shape of a patch.
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops)).expect("a list of JSON patch operations");
    Decision::Inject { patch, warnings }
}
