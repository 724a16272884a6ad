//! `palisade install`: prints every object a cluster needs to run palisade, so that
//! `palisade install | kubectl apply -f -` is the whole installation: the PalisadePolicy
//! CRD, least-privilege RBAC, the controller (Deployment with 2 replicas, its
//! PodDisruptionBudget and Service), both webhook configurations and their TLS material,
//! and the namespaces to inject. `charts/palisade` renders the same objects.

pub mod crd;
pub mod yaml;

use std::process::ExitCode;

use k8s_openapi::ByteString;
use palisade_controller::inject::annotations::{INJECT, MODE};
use palisade_controller::tls;
use serde_json::{json, Value};

/// The controller's Service, which the webhooks and proxies reach.
pub const SERVICE: &str = "palisade";
/// The controller's Deployment, ServiceAccount and RBAC objects.
pub const CONTROLLER: &str = "palisade-controller";
/// The Secret holding the TLS material.
pub const TLS_SECRET: &str = "palisade-tls";
/// The mutating webhook configuration.
pub const INJECT_WEBHOOK: &str = "palisade-inject";
/// The validating webhook configuration.
pub const VALIDATE_WEBHOOK: &str = "palisade-validate";
/// The controller's image unless `--image` says otherwise.
pub const DEFAULT_IMAGE: &str = concat!("palisade/palisade:", env!("CARGO_PKG_VERSION"));
/// Where the controller reads its TLS material.
const TLS_DIR: &str = "/etc/palisade/tls";

/// A webhook's failure policy.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FailurePolicy {
    /// The API server refuses the request when the webhook cannot answer.
    Fail,
    /// The API server admits the request unchanged.
    Ignore,
}

impl FailurePolicy {
    fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
}

/// `--mode`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Mode {
    /// Would-be denials are logged and let through.
    Audit,
    /// Denied flows are refused.
    Enforce,
}

/// `--fail-mode`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FailMode {
    /// Proxies refuse new flows until their first policy arrives.
    Closed,
    /// Proxies let new flows through until their first policy arrives.
    Open,
}

/// `--output`.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Output {
    /// YAML documents separated by `---`.
    #[default]
    Yaml,
    /// One JSON `List`.
    Json,
}

/// Arguments of `palisade install`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The namespace palisade's controller runs in.
    #[arg(long, short = 'n', default_value = "palisade-system")]
    namespace: String,
    /// Namespaces whose pods get a proxy (labelled palisade.dev/inject=enabled).
    #[arg(long, value_name = "NAMESPACE", num_args = 1.., value_delimiter = ',')]
    inject: Vec<String>,
    /// The mode of those namespaces: audit lets would-be denials through, logged.
    #[arg(long, value_enum, default_value = "enforce")]
    mode: Mode,
    /// The image every part runs from.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    image: String,
    /// What proxies do before their first policy arrives.
    #[arg(long, value_enum, default_value = "closed")]
    fail_mode: FailMode,
    /// The port of injected proxies' metrics listener (/metrics for Prometheus, announced
    /// with prometheus.io annotations); 0: none.
    #[arg(long, default_value_t = palisade_controller::inject::containers::METRICS_PORT)]
    proxy_metrics_port: u16,
    /// What the API server does with a pod of an injected namespace when the injection
    /// webhook cannot answer: Fail keeps pods without a proxy from starting there.
    #[arg(long, value_enum, default_value = "fail")]
    inject_failure_policy: FailurePolicy,
    /// What the API server does with a policy when the validating webhook cannot answer:
    /// the controller still refuses an invalid policy and keeps the last valid one.
    #[arg(long, value_enum, default_value = "ignore")]
    validate_failure_policy: FailurePolicy,
    /// Print YAML documents or one JSON List.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
    /// Print only the PalisadePolicy CRD (for those who manage CRDs apart; the chart's
    /// crds/ folder holds the same).
    #[arg(long)]
    crd_only: bool,
}

/// The labels of every object, with its component.
pub fn labels(component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "palisade",
        "app.kubernetes.io/part-of": "palisade",
        "app.kubernetes.io/component": component,
    })
}

fn selector_labels() -> Value {
    json!({"app.kubernetes.io/name": "palisade", "app.kubernetes.io/component": "controller"})
}

fn base64(text: &str) -> Value {
    // ByteString serialises as base64, as the API carries bytes.
    serde_json::to_value(ByteString(text.as_bytes().to_vec())).unwrap_or(Value::Null)
}

fn namespace(name: &str, component: &str, extra_labels: Value, annotations: Value) -> Value {
    let mut l = labels(component);
    if let (Some(l), Some(extra)) = (l.as_object_mut(), extra_labels.as_object()) {
        l.extend(extra.clone());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": l, "annotations": annotations},
    })
}

fn rbac(ns: &str) -> Vec<Value> {
    let read = ["get", "list", "watch"];
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": CONTROLLER, "namespace": ns, "labels": labels("controller")},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": CONTROLLER, "labels": labels("controller")},
            "rules": [
                // The cluster state policies are compiled from: read only.
                {"apiGroups": [""], "resources": ["namespaces", "pods", "services"], "verbs": read},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
                {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": read},
                {"apiGroups": ["palisade.dev"], "resources": ["palisadepolicies"], "verbs": read},
                {"apiGroups": ["cilium.io"], "resources": ["ciliumnetworkpolicies"], "verbs": read},
                // To notice the CiliumNetworkPolicy CRD appearing.
                {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": read},
                // Proxies' tokens are checked with TokenReview.
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CONTROLLER, "labels": labels("controller")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONTROLLER},
            "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": ns}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": CONTROLLER, "namespace": ns, "labels": labels("controller")},
            // Each replica's heartbeat Lease, in the controller's namespace only.
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "patch"]}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": CONTROLLER, "namespace": ns, "labels": labels("controller")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROLLER},
            "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": ns}],
        }),
    ]
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn http_probe(path: &str, period: u32, failures: u32) -> Value {
    json!({"httpGet": {"path": path, "port": "metrics"}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 2})
}

fn deployment(a: &Args) -> Value {
    let ns = &a.namespace;
    let mut args: Vec<String> = vec!["controller".into()];
    // The cluster's state comes from the Kubernetes API (no --source).
    args.extend([
        "--listen=[::]:7443".into(),
        format!("--tls-cert={TLS_DIR}/tls.crt"),
        format!("--tls-key={TLS_DIR}/tls.key"),
        "--metrics=[::]:9090".into(),
        "--webhook-listen=[::]:8443".into(),
        format!("--webhook-cert={TLS_DIR}/tls.crt"),
        format!("--webhook-key={TLS_DIR}/tls.key"),
        format!("--stream-url=https://{SERVICE}.{ns}.svc:7443"),
        format!(
            "--fail-mode={}",
            match a.fail_mode {
                FailMode::Closed => "closed",
                FailMode::Open => "open",
            }
        ),
        format!("--proxy-metrics-port={}", a.proxy_metrics_port),
    ]);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": CONTROLLER, "namespace": ns, "labels": labels("controller")},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": selector_labels()},
            // Never fewer than two serving replicas during a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels("controller"), "annotations": {INJECT: "disabled"}},
                "spec": {
                    "serviceAccountName": CONTROLLER,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    // Replicas on different nodes, so one node's loss leaves one serving.
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector_labels()}},
                    }]}},
                    "containers": [{
                        "name": "controller",
                        "image": a.image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": [palisade_controller::inject::containers::BINARY],
                        "args": args,
                        "env": [
                            {"name": "PALISADE_IMAGE", "value": a.image},
                            field_env("PALISADE_REPLICA_POD", "metadata.name"),
                            field_env("PALISADE_REPLICA_NAMESPACE", "metadata.namespace"),
                            field_env("PALISADE_REPLICA_POD_UID", "metadata.uid"),
                        ],
                        "ports": [
                            {"name": "stream", "containerPort": 7443, "protocol": "TCP"},
                            {"name": "webhook", "containerPort": 8443, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                        ],
                        "readinessProbe": http_probe("/readyz", 5, 2),
                        "livenessProbe": http_probe("/healthz", 10, 3),
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"memory": "512Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [{"name": "tls", "mountPath": TLS_DIR, "readOnly": true}],
                    }],
                    "volumes": [{"name": "tls", "secret": {"secretName": TLS_SECRET}}],
                },
            },
        },
    })
}

fn controller_objects(a: &Args) -> Vec<Value> {
    let ns = &a.namespace;
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": ns, "labels": labels("controller")},
            "spec": {
                "selector": selector_labels(),
                "ports": [
                    {"name": "stream", "port": 7443, "targetPort": "stream", "protocol": "TCP"},
                    {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"},
                    {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
                ],
            },
        }),
        deployment(a),
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": CONTROLLER, "namespace": ns, "labels": labels("controller")},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": selector_labels()}},
        }),
    ]
}

fn client_config(ns: &str, path: &str, ca: &str) -> Value {
    json!({
        "service": {"name": SERVICE, "namespace": ns, "path": path, "port": 443},
        "caBundle": base64(ca),
    })
}

fn webhooks(a: &Args, ca: &str) -> Vec<Value> {
    let ns = &a.namespace;
    let pods = json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}]);
    let common = |name: &str, failure: FailurePolicy, path: &str| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": failure.as_str(),
            "matchPolicy": "Equivalent",
            "timeoutSeconds": 10,
            "clientConfig": client_config(ns, path, ca),
        })
    };
    // Pods of injected namespaces: with Fail, none starts there without its proxy.
    let mut namespaces = common(
        "namespaces.inject.palisade.dev",
        a.inject_failure_policy,
        "/inject",
    );
    namespaces["namespaceSelector"] = json!({"matchLabels": {INJECT: "enabled"}});
    namespaces["rules"] = pods.clone();
    namespaces["reinvocationPolicy"] = json!("IfNeeded");
    // Pods elsewhere that ask by annotation: the webhook sees every pod there, so it must
    // never block the rest of the cluster.
    let mut annotated = common("pods.inject.palisade.dev", FailurePolicy::Ignore, "/inject");
    annotated["namespaceSelector"] = json!({"matchExpressions": [
        {"key": INJECT, "operator": "NotIn", "values": ["enabled"]},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", ns]},
    ]});
    annotated["rules"] = pods;
    annotated["reinvocationPolicy"] = json!("IfNeeded");
    let mut policies = common(
        "policies.validate.palisade.dev",
        a.validate_failure_policy,
        "/validate",
    );
    let write = json!(["CREATE", "UPDATE"]);
    policies["rules"] = json!([
        {"apiGroups": ["palisade.dev"], "apiVersions": ["v1alpha1"], "operations": write, "resources": ["palisadepolicies"], "scope": "Namespaced"},
        {"apiGroups": ["cilium.io"], "apiVersions": ["v2"], "operations": write, "resources": ["ciliumnetworkpolicies"], "scope": "Namespaced"},
        {"apiGroups": ["networking.k8s.io"], "apiVersions": ["v1"], "operations": write, "resources": ["networkpolicies"], "scope": "Namespaced"},
    ]);
    vec![
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": INJECT_WEBHOOK, "labels": labels("webhook")},
            "webhooks": [namespaces, annotated],
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": VALIDATE_WEBHOOK, "labels": labels("webhook")},
            "webhooks": [policies],
        }),
    ]
}

/// Every object, in the order `kubectl apply` should create them.
pub fn objects(a: &Args, material: &tls::Material) -> Vec<Value> {
    let ns = &a.namespace;
    let mut out = vec![
        namespace(ns, "controller", json!({}), json!({})),
        crd::definition(),
    ];
    out.extend(rbac(ns));
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": TLS_SECRET, "namespace": ns, "labels": labels("controller")},
        "data": {"tls.crt": base64(&material.cert), "tls.key": base64(&material.key), "ca.crt": base64(&material.ca)},
    }));
    out.extend(controller_objects(a));
    out.extend(webhooks(a, &material.ca));
    let mode = match a.mode {
        Mode::Audit => "audit",
        Mode::Enforce => "enforce",
    };
    for name in &a.inject {
        out.push(namespace(
            name,
            "workloads",
            json!({INJECT: "enabled"}),
            json!({MODE: mode}),
        ));
    }
    out
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let objects = if args.crd_only {
        vec![crd::definition()]
    } else {
        let material = tls::generate(tls::service_names(SERVICE, &args.namespace))?;
        objects(&args, &material)
    };
    match args.output {
        Output::Yaml => print!("{}", yaml::documents(&objects)?),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"apiVersion": "v1", "kind": "List", "items": objects})
            )?
        ),
    }
    Ok(ExitCode::SUCCESS)
}
