//! The injection webhook without a server: AdmissionReview requests as the API server sends
//! them, the answer's JSON patch applied to the pod, and the resulting spec checked.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Namespace, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use palisade_controller::inject::{InjectOptions, SidecarKind};
use palisade_controller::webhook::mutate;
use serde_json::{json, Value};

const IMAGE: &str = "registry.example/palisade:0.1.0";
const CONTROLLER: &str = "https://palisade.palisade-system.svc:7443";

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn options(kind: SidecarKind) -> InjectOptions {
    let mut o = InjectOptions::new(IMAGE.into(), CONTROLLER.into(), kind);
    o.ca = Some(CA.into());
    o
}

fn namespace(labels: Value, annotations: Value) -> Namespace {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": labels, "annotations": annotations},
    }))
    .unwrap()
}

fn injected_ns() -> Namespace {
    namespace(json!({"palisade.dev/inject": "enabled"}), json!({}))
}

/// A pod as a Deployment's ReplicaSet creates it: no name yet, only generateName.
fn pod(annotations: Value, spec: Value) -> Value {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{
            "name": "web", "image": "nginx:1.27",
            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
        }]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-7d4b9c-", "namespace": "shop", "labels": {"app": "web"}, "annotations": annotations},
        "spec": spec,
    })
}

fn request(pod: &Value) -> AdmissionRequest<Pod> {
    let review: AdmissionReview<Pod> = serde_json::from_value(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b5f1f5c-8d1e-4a8e-9d7e-2f6f4b3c2a10",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    }))
    .unwrap();
    review.try_into().unwrap()
}

/// What the webhook answered, as the API server reads it back.
fn answer(pod: &Value, ns: Option<&Namespace>, options: &InjectOptions) -> Value {
    let response: AdmissionResponse = mutate(&request(pod), ns, options);
    let review = serde_json::to_value(response.into_review()).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(
        review["response"]["uid"],
        "0b5f1f5c-8d1e-4a8e-9d7e-2f6f4b3c2a10"
    );
    review["response"].clone()
}

/// Applies the answer's patch as the API server does, and reads the pod back.
fn patched(pod: &Value, response: &Value) -> Pod {
    assert_eq!(response["allowed"], true, "{response:#}");
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = patch_bytes(&response["patch"]);
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    serde_json::from_value(doc).unwrap()
}

fn inject(pod: &Value, ns: Option<&Namespace>, options: &InjectOptions) -> Pod {
    patched(pod, &answer(pod, ns, options))
}

/// The patch is `[]byte` in the API's Go types: kube sends it as a list of bytes, which
/// Go's JSON decoder reads into a byte slice as readily as base64.
fn patch_bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .expect("the patch as a list of bytes")
        .iter()
        .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
        .collect()
}

fn container<'a>(list: &'a [Container], name: &str) -> &'a Container {
    list.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env(c: &Container) -> BTreeMap<String, EnvVar> {
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.clone()))
        .collect()
}

fn value<'a>(env: &'a BTreeMap<String, EnvVar>, name: &str) -> Option<&'a str> {
    env.get(name).and_then(|e| e.value.as_deref())
}

fn field_ref(env: &BTreeMap<String, EnvVar>, name: &str) -> Option<String> {
    env.get(name)?
        .value_from
        .as_ref()?
        .field_ref
        .as_ref()
        .map(|f| f.field_path.clone())
}

fn caps(c: &Container) -> (Vec<String>, Vec<String>) {
    let caps = c
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .clone()
        .unwrap();
    (caps.add.unwrap_or_default(), caps.drop.unwrap_or_default())
}

fn exec(p: &Option<k8s_openapi::api::core::v1::Probe>) -> Vec<String> {
    p.as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap()
        .command
        .clone()
        .unwrap()
}

#[test]
fn a_plain_pod_in_an_injected_namespace_gets_init_and_a_native_sidecar() {
    let original = pod(json!({}), json!({}));
    let ns = injected_ns();
    let out = inject(&original, Some(&ns), &options(SidecarKind::Native));
    let spec = out.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_ref().unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["palisade-init", "palisade-proxy"]);

    // The app is untouched.
    assert_eq!(spec.containers.len(), 1);
    let original_app: Container =
        serde_json::from_value(original["spec"]["containers"][0].clone()).unwrap();
    assert_eq!(spec.containers[0], original_app);

    let init = &inits[0];
    assert_eq!(init.image.as_deref(), Some(IMAGE));
    assert_eq!(
        init.command.as_deref().unwrap(),
        ["/usr/local/bin/palisade", "init"]
    );
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        caps(init),
        (
            vec!["NET_ADMIN".into(), "NET_RAW".into()],
            vec!["ALL".into()]
        )
    );
    assert!(init.restart_policy.is_none(), "init runs once");
    // Nothing names the DNS servers: init reads the resolv.conf the kubelet wrote. The
    // node's addresses (every family) come from the downward API; echo stays dropped.
    let init_env = env(init);
    let names: Vec<&String> = init_env.keys().collect();
    assert_eq!(names, ["PALISADE_NODE_IPS"]);
    assert_eq!(
        field_ref(&init_env, "PALISADE_NODE_IPS").as_deref(),
        Some("status.hostIPs")
    );

    let proxy = &inits[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        proxy.command.as_deref().unwrap(),
        ["/usr/local/bin/palisade", "proxy"]
    );
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(2190));
    assert_eq!(sc.run_as_group, Some(2190));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(caps(proxy), (vec!["NET_RAW".into()], vec!["ALL".into()]));
    let e = env(proxy);
    // The policy stream: the CA inline, the projected token where it is mounted.
    assert_eq!(value(&e, "PALISADE_CA"), Some(CA));
    assert_eq!(
        value(&e, "PALISADE_TOKEN_FILE"),
        Some("/var/run/secrets/palisade/token")
    );
    let mount = &proxy.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (
            mount.name.as_str(),
            mount.mount_path.as_str(),
            mount.read_only
        ),
        ("palisade-token", "/var/run/secrets/palisade", Some(true))
    );
    assert_eq!(
        field_ref(&e, "PALISADE_POD_NAME").as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        field_ref(&e, "PALISADE_POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(
        value(&e, "PALISADE_POD"),
        Some("$(PALISADE_POD_NAMESPACE)/$(PALISADE_POD_NAME)")
    );
    // Both families of a dual-stack pod: the downward API lists every address.
    assert_eq!(
        field_ref(&e, "PALISADE_POD_IPS").as_deref(),
        Some("status.podIPs")
    );
    assert_eq!(
        field_ref(&e, "PALISADE_HOST_IP").as_deref(),
        Some("status.hostIP")
    );
    assert_eq!(
        field_ref(&e, "PALISADE_NODE_IPS").as_deref(),
        Some("status.hostIPs")
    );
    assert_eq!(value(&e, "PALISADE_CONTROLLER"), Some(CONTROLLER));
    assert_eq!(value(&e, "PALISADE_FAIL_MODE"), Some("closed"));
    // $(VAR) refers only to variables defined before it.
    let order: Vec<&str> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    let at = |n: &str| order.iter().position(|o| *o == n).unwrap();
    assert!(at("PALISADE_POD_NAME") < at("PALISADE_POD"));
    assert!(at("PALISADE_POD_NAMESPACE") < at("PALISADE_POD"));

    // Probes run inside the pod: the admin port is on localhost only.
    let palisade_probe = |path: &str| {
        vec![
            "/usr/local/bin/palisade".to_owned(),
            "probe".into(),
            path.into(),
        ]
    };
    assert_eq!(exec(&proxy.startup_probe), palisade_probe("/live"));
    assert_eq!(exec(&proxy.readiness_probe), palisade_probe("/ready"));
    assert_eq!(exec(&proxy.liveness_probe), palisade_probe("/live"));
    // The app's own probe is left alone: kubelet probes come from the node, which the
    // proxy always lets through.
    assert!(spec.containers[0]
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .is_some());

    let annotations = out.metadata.annotations.unwrap();
    assert_eq!(annotations["palisade.dev/injected"], IMAGE);
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "web"
    );
    let volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(volumes, ["palisade-run", "palisade-token"]);
    // A token bound to the pod, for the controller's audience, rotated by the kubelet.
    let token = spec.volumes.as_ref().unwrap()[1]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("palisade"));
    assert_eq!(token.path, "token");
    assert_eq!(token.expiration_seconds, Some(3600));
    assert_eq!(init.volume_mounts.as_ref().unwrap()[0].mount_path, "/run");
}

#[test]
fn only_pods_that_ask_are_injected() {
    let plain = pod(json!({}), json!({}));
    let unlabeled = namespace(json!({}), json!({}));
    let r = answer(&plain, Some(&unlabeled), &options(SidecarKind::Native));
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none(), "{r:#}");

    // The pod's annotation asks in a namespace that does not.
    let asking = pod(json!({"palisade.dev/inject": "enabled"}), json!({}));
    let out = inject(&asking, Some(&unlabeled), &options(SidecarKind::Native));
    assert_eq!(out.spec.unwrap().init_containers.unwrap().len(), 2);
    // ...even when the namespace cannot be read.
    let out = inject(&asking, None, &options(SidecarKind::Native));
    assert_eq!(out.spec.unwrap().init_containers.unwrap().len(), 2);

    // A pod opts out of its injected namespace.
    let opting_out = pod(json!({"palisade.dev/inject": "disabled"}), json!({}));
    let r = answer(
        &opting_out,
        Some(&injected_ns()),
        &options(SidecarKind::Native),
    );
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());

    // A typo is reported, and the namespace decides.
    let typo = pod(json!({"palisade.dev/inject": "enable"}), json!({}));
    let r = answer(&typo, Some(&unlabeled), &options(SidecarKind::Native));
    assert!(r.get("patch").is_none());
    assert!(
        r["warnings"][0].as_str().unwrap().contains("\"enable\""),
        "{r:#}"
    );
}

#[test]
fn an_injected_pod_is_never_injected_twice() {
    let original = pod(json!({}), json!({}));
    let ns = injected_ns();
    let once = inject(&original, Some(&ns), &options(SidecarKind::Native));
    let again = serde_json::to_value(&once).unwrap();
    let r = answer(&again, Some(&ns), &options(SidecarKind::Native));
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none(), "{r:#}");
    // The same for the fallback's regular container.
    let once = inject(&original, Some(&ns), &options(SidecarKind::Container));
    let again = serde_json::to_value(&once).unwrap();
    let r = answer(&again, Some(&ns), &options(SidecarKind::Container));
    assert!(r.get("patch").is_none(), "{r:#}");
}

#[test]
fn annotations_become_init_and_proxy_options() {
    let annotated = pod(
        json!({
            "palisade.dev/skip-inbound-ports": "8081, 9000-9100",
            "palisade.dev/skip-outbound-ports": "5432",
            "palisade.dev/skip-outbound-cidrs": "10.20.0.0/16,fd00:20::/64",
            "palisade.dev/fail-mode": "open",
            "palisade.dev/opaque-ports": "3306",
            "palisade.dev/allow-icmp": "true",
            "palisade.dev/dns-grace": "30s",
            "palisade.dev/dns-refuse-with": "refused",
            "palisade.dev/require-sni": "true",
        }),
        json!({}),
    );
    let out = inject(
        &annotated,
        Some(&injected_ns()),
        &options(SidecarKind::Native),
    );
    let inits = out.spec.unwrap().init_containers.unwrap();
    let init = env(container(&inits, "palisade-init"));
    assert_eq!(
        value(&init, "PALISADE_SKIP_INBOUND_PORTS"),
        Some("8081,9000-9100")
    );
    assert_eq!(value(&init, "PALISADE_SKIP_OUTBOUND_PORTS"), Some("5432"));
    assert_eq!(
        value(&init, "PALISADE_SKIP_OUTBOUND_CIDRS"),
        Some("10.20.0.0/16,fd00:20::/64")
    );
    assert_eq!(value(&init, "PALISADE_ALLOW_ICMP"), Some("true"));
    let proxy = env(container(&inits, "palisade-proxy"));
    assert_eq!(value(&proxy, "PALISADE_FAIL_MODE"), Some("open"));
    assert_eq!(value(&proxy, "PALISADE_OPAQUE_PORTS"), Some("3306"));
    assert!(value(&proxy, "PALISADE_LOG_ALLOWED").is_none());
    assert_eq!(value(&proxy, "PALISADE_DNS_GRACE"), Some("30s"));
    assert_eq!(value(&proxy, "PALISADE_DNS_REFUSE_WITH"), Some("refused"));
    // requireSNI's default is compiled into the pod's policy by the controller, which
    // reads the annotation live: no option of the proxy.
    assert!(!proxy.keys().any(|k| k.contains("SNI")), "{proxy:?}");

    // The installation's fail mode applies when the pod says nothing.
    let mut open = options(SidecarKind::Native);
    open.fail_mode = palisade_controller::inject::FailMode::Open;
    open.hold = Some("2s".into());
    open.log_allowed = true;
    open.dns_grace = Some("5s".into());
    let out = inject(&pod(json!({}), json!({})), Some(&injected_ns()), &open);
    let inits = out.spec.unwrap().init_containers.unwrap();
    let proxy = env(container(&inits, "palisade-proxy"));
    assert_eq!(value(&proxy, "PALISADE_FAIL_MODE"), Some("open"));
    assert_eq!(value(&proxy, "PALISADE_HOLD"), Some("2s"));
    assert_eq!(value(&proxy, "PALISADE_LOG_ALLOWED"), Some("true"));
    assert_eq!(value(&proxy, "PALISADE_DNS_GRACE"), Some("5s"));
    assert!(value(&proxy, "PALISADE_DNS_REFUSE_WITH").is_none());
}

#[test]
fn a_bad_annotation_is_refused_with_its_fix() {
    let cases = [
        (
            "palisade.dev/skip-inbound-ports",
            "80,http",
            "`http` is not a port",
        ),
        (
            "palisade.dev/skip-outbound-cidrs",
            "10.0.0.0/33",
            "`10.0.0.0/33` is not an IP address or CIDR",
        ),
        (
            "palisade.dev/opaque-ports",
            "70000",
            "`70000` is not a port",
        ),
        (
            "palisade.dev/fail-mode",
            "closd",
            "\"closd\" is not a fail mode; use \"closed\" or \"open\"",
        ),
        (
            "palisade.dev/allow-icmp",
            "yes",
            "\"yes\" is not \"true\" or \"false\"",
        ),
        (
            "palisade.dev/require-sni",
            "yes",
            "\"yes\" is not \"true\" or \"false\"",
        ),
        (
            "palisade.dev/dns-grace",
            "30 parsecs",
            "\"30 parsecs\" is not a duration",
        ),
        (
            "palisade.dev/dns-refuse-with",
            "servfail",
            "\"servfail\" is not an answer; use \"nxdomain\" or \"refused\"",
        ),
        (
            "palisade.dev/mode",
            "audits",
            "\"audits\" is not a mode; use \"audit\" or \"enforce\"",
        ),
    ];
    for (key, bad, expected) in cases {
        let r = answer(
            &pod(json!({key: bad}), json!({})),
            Some(&injected_ns()),
            &options(SidecarKind::Native),
        );
        assert_eq!(r["allowed"], false, "{key}: {r:#}");
        let message = r["status"]["message"].as_str().unwrap();
        assert!(message.starts_with("pod shop/web-7d4b9c-*: "), "{message}");
        assert!(message.contains(key), "{key}: {message}");
        assert!(message.contains(expected), "{key}: {message}");
        assert_eq!(r["status"]["code"], 403);
    }
}

#[test]
fn a_host_network_pod_is_left_alone_with_a_warning() {
    let host = pod(json!({}), json!({"hostNetwork": true}));
    let r = answer(&host, Some(&injected_ns()), &options(SidecarKind::Native));
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    let warning = r["warnings"][0].as_str().unwrap();
    assert!(warning.contains("hostNetwork"), "{warning}");
    assert!(
        warning.contains("nothing enforces its policies"),
        "{warning}"
    );
}

/// A Job's pod: the native sidecar is stopped by the kubelet once the Job's containers
/// are done, so the pod completes.
#[test]
fn a_job_completes_with_the_native_sidecar() {
    let job = pod(
        json!({}),
        json!({"restartPolicy": "Never", "containers": [{"name": "migrate", "image": "migrate:1", "command": ["migrate", "up"]}]}),
    );
    let out = inject(&job, Some(&injected_ns()), &options(SidecarKind::Native));
    let spec = out.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    // The only regular container is the Job's own: the pod ends when it does.
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["migrate"]);
    let inits = spec.init_containers.unwrap();
    assert_eq!(
        container(&inits, "palisade-proxy")
            .restart_policy
            .as_deref(),
        Some("Always")
    );
}

/// Without native sidecars a proxy container would keep a Job's pod running: refused in
/// enforce mode, admitted without a proxy (and a warning) in audit mode.
#[test]
fn a_job_without_native_sidecars_is_refused_or_warned() {
    let spec = json!({"restartPolicy": "OnFailure", "containers": [{"name": "migrate", "image": "migrate:1"}]});
    let r = answer(
        &pod(json!({}), spec.clone()),
        Some(&injected_ns()),
        &options(SidecarKind::Container),
    );
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(message.contains("restartPolicy OnFailure"), "{message}");
    assert!(message.contains("Upgrade the cluster"), "{message}");

    let audit = namespace(
        json!({"palisade.dev/inject": "enabled"}),
        json!({"palisade.dev/mode": "audit"}),
    );
    let r = answer(
        &pod(json!({}), spec),
        Some(&audit),
        &options(SidecarKind::Container),
    );
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    assert!(r["warnings"][0]
        .as_str()
        .unwrap()
        .contains("nothing enforces"));
}

#[test]
fn without_native_sidecars_the_proxy_is_the_first_container_and_the_app_waits() {
    let out = inject(
        &pod(json!({}), json!({})),
        Some(&injected_ns()),
        &options(SidecarKind::Container),
    );
    let spec = out.spec.unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["palisade-proxy", "web"]);
    let proxy = &spec.containers[0];
    assert!(proxy.restart_policy.is_none());
    // The kubelet starts the next container only once postStart returns.
    let hook = proxy
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap()
        .command
        .clone()
        .unwrap();
    assert_eq!(
        hook,
        [
            "/usr/local/bin/palisade",
            "probe",
            "--wait",
            "120s",
            "/live"
        ]
    );
    let inits: Vec<String> = spec
        .init_containers
        .unwrap()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(inits, ["palisade-init"]);
    // kubectl logs and exec still default to the app.
    assert_eq!(
        out.metadata.annotations.unwrap()["kubectl.kubernetes.io/default-container"],
        "web"
    );
}

#[test]
fn palisade_goes_ahead_of_the_pods_own_init_containers() {
    let with_inits = pod(
        json!({}),
        json!({"initContainers": [{"name": "fetch-config", "image": "curl:8"}]}),
    );
    let out = inject(
        &with_inits,
        Some(&injected_ns()),
        &options(SidecarKind::Native),
    );
    let names: Vec<String> = out
        .spec
        .unwrap()
        .init_containers
        .unwrap()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(names, ["palisade-init", "palisade-proxy", "fetch-config"]);
}

#[test]
fn dns_servers_named_by_the_pod_are_redirected() {
    let custom = pod(
        json!({}),
        json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.96.0.10", "fd00:96::a"], "searches": ["svc.cluster.local"]}}),
    );
    let out = inject(&custom, Some(&injected_ns()), &options(SidecarKind::Native));
    let inits = out.spec.unwrap().init_containers.unwrap();
    let init = env(container(&inits, "palisade-init"));
    assert_eq!(
        value(&init, "PALISADE_DNS_SERVERS"),
        Some("10.96.0.10,fd00:96::a")
    );
    let proxy = env(container(&inits, "palisade-proxy"));
    assert_eq!(
        value(&proxy, "PALISADE_DNS_UPSTREAMS"),
        Some("10.96.0.10,fd00:96::a")
    );

    // ClusterFirst with extra nameservers: the kubelet writes them all to resolv.conf.
    let cluster_first = pod(
        json!({}),
        json!({"dnsPolicy": "ClusterFirst", "dnsConfig": {"nameservers": ["10.1.1.1"]}}),
    );
    let out = inject(
        &cluster_first,
        Some(&injected_ns()),
        &options(SidecarKind::Native),
    );
    let inits = out.spec.unwrap().init_containers.unwrap();
    assert!(value(
        &env(container(&inits, "palisade-init")),
        "PALISADE_DNS_SERVERS"
    )
    .is_none());
}

#[test]
fn a_port_the_proxy_needs_is_refused() {
    let clash = pod(
        json!({}),
        json!({"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 7490}]}]}),
    );
    let r = answer(&clash, Some(&injected_ns()), &options(SidecarKind::Native));
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(message.contains("port 7490"), "{message}");
    assert!(message.contains("reserved"), "{message}");
}

/// Each way around the proxy: refused in enforce mode with why and how to fix it, and
/// admitted with the same words as a warning in audit mode.
#[test]
fn bypass_attempts_are_refused_in_enforce_and_warned_in_audit() {
    let cases = [
        (
            json!({"containers": [{"name": "web", "image": "web:1", "securityContext": {"runAsUser": 2190}}]}),
            "container \"web\" runs as uid 2190, the proxy's",
            "securityContext.runAsUser",
        ),
        (
            json!({"securityContext": {"runAsUser": 2190}, "containers": [{"name": "web", "image": "web:1"}]}),
            "container \"web\" runs as uid 2190",
            "Run it as another user",
        ),
        (
            json!({"containers": [{"name": "web", "image": "web:1", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}),
            "container \"web\" adds NET_ADMIN: it could rewrite the pod's iptables rules",
            "Remove NET_ADMIN from securityContext.capabilities.add",
        ),
        (
            json!({"containers": [{"name": "web", "image": "web:1", "securityContext": {"capabilities": {"add": ["CAP_NET_RAW"]}}}]}),
            "container \"web\" adds NET_RAW: it could send raw packets",
            "Remove NET_RAW",
        ),
        (
            json!({"initContainers": [{"name": "setup", "image": "setup:1", "securityContext": {"privileged": true}}], "containers": [{"name": "web", "image": "web:1"}]}),
            "init container \"setup\" is privileged",
            "Drop privileged: true",
        ),
    ];
    let audit = namespace(
        json!({"palisade.dev/inject": "enabled"}),
        json!({"palisade.dev/mode": "audit"}),
    );
    for (spec, why, fix) in cases {
        let p = pod(json!({}), spec.clone());
        let r = answer(&p, Some(&injected_ns()), &options(SidecarKind::Native));
        assert_eq!(r["allowed"], false, "{spec}");
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("could bypass its network policy"),
            "{message}"
        );
        assert!(message.contains(why), "{message}");
        assert!(message.contains(fix), "{message}");

        let r = answer(&p, Some(&audit), &options(SidecarKind::Native));
        let warnings = r["warnings"].as_array().unwrap();
        assert!(
            warnings.iter().any(|w| w.as_str().unwrap().contains(why)),
            "{r:#}"
        );
        // Admitted, with its proxy.
        let out = patched(&p, &r);
        assert_eq!(
            out.spec.unwrap().init_containers.unwrap()[0].name,
            "palisade-init"
        );
    }

    // The pod's own audit annotation wins over an enforcing namespace.
    let p = pod(
        json!({"palisade.dev/mode": "audit"}),
        json!({"containers": [{"name": "web", "image": "web:1", "securityContext": {"runAsUser": 2190}}]}),
    );
    assert_eq!(
        answer(&p, Some(&injected_ns()), &options(SidecarKind::Native))["allowed"],
        true
    );
    // A safe pod with the same capabilities dropped passes.
    let p = pod(
        json!({}),
        json!({"containers": [{"name": "web", "image": "web:1", "securityContext": {"runAsUser": 1000, "capabilities": {"drop": ["NET_RAW"]}}}]}),
    );
    assert_eq!(
        answer(&p, Some(&injected_ns()), &options(SidecarKind::Native))["allowed"],
        true
    );
}

/// Prometheus finds the proxy's metrics listener as it finds Istio's: the pod is annotated
/// (unless it says where its own metrics are), the proxy declares the port, and init and
/// the proxy get the port (unset: the default); the pod or the installation can turn it off.
#[test]
fn the_proxy_metrics_listener_is_declared_and_announced_unless_turned_off() {
    let ns = injected_ns();
    let native = options(SidecarKind::Native);
    let proxy_of = |p: &Pod| {
        container(
            p.spec.as_ref().unwrap().init_containers.as_ref().unwrap(),
            "palisade-proxy",
        )
        .clone()
    };
    let init_of = |p: &Pod| {
        container(
            p.spec.as_ref().unwrap().init_containers.as_ref().unwrap(),
            "palisade-init",
        )
        .clone()
    };

    let out = inject(&pod(json!({}), json!({})), Some(&ns), &native);
    let annotations = out.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "7491");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let proxy = proxy_of(&out);
    let ports = proxy.ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (
            ports[0].name.as_deref(),
            ports[0].container_port,
            ports[0].protocol.as_deref()
        ),
        (Some("palisade-prom"), 7491, Some("TCP"))
    );
    // The default port: init and the proxy use their own default.
    assert_eq!(value(&env(&proxy), "PALISADE_METRICS_PORT"), None);
    assert_eq!(value(&env(&init_of(&out)), "PALISADE_METRICS_PORT"), None);

    // A pod that already says where its metrics are keeps its annotations.
    let own = json!({"prometheus.io/scrape": "true", "prometheus.io/port": "9100"});
    let out = inject(&pod(own, json!({})), Some(&ns), &native);
    let annotations = out.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["prometheus.io/port"], "9100");
    assert!(!annotations.contains_key("prometheus.io/path"));
    assert!(
        proxy_of(&out).ports.is_some(),
        "the listener is still there"
    );

    // Turned off by the pod: no listener, no port, no annotation.
    let off = inject(
        &pod(json!({"palisade.dev/metrics": "false"}), json!({})),
        Some(&ns),
        &native,
    );
    assert!(!off
        .metadata
        .annotations
        .clone()
        .unwrap()
        .contains_key("prometheus.io/scrape"));
    assert!(proxy_of(&off).ports.is_none());
    assert_eq!(
        value(&env(&proxy_of(&off)), "PALISADE_METRICS_PORT"),
        Some("0")
    );
    assert_eq!(
        value(&env(&init_of(&off)), "PALISADE_METRICS_PORT"),
        Some("0")
    );

    // Turned off by the installation, and back on by a pod; another port is passed on.
    let mut none = options(SidecarKind::Native);
    none.metrics_port = None;
    let out = inject(&pod(json!({}), json!({})), Some(&ns), &none);
    assert!(proxy_of(&out).ports.is_none());
    let out = inject(
        &pod(json!({"palisade.dev/metrics": "true"}), json!({})),
        Some(&ns),
        &none,
    );
    assert_eq!(proxy_of(&out).ports.unwrap()[0].container_port, 7491);
    let mut other = options(SidecarKind::Native);
    other.metrics_port = Some(9102);
    let out = inject(&pod(json!({}), json!({})), Some(&ns), &other);
    assert_eq!(
        out.metadata.annotations.clone().unwrap()["prometheus.io/port"],
        "9102"
    );
    assert_eq!(
        value(&env(&proxy_of(&out)), "PALISADE_METRICS_PORT"),
        Some("9102")
    );
    assert_eq!(
        value(&env(&init_of(&out)), "PALISADE_METRICS_PORT"),
        Some("9102")
    );

    // A typo is refused with its fix.
    let r = answer(
        &pod(json!({"palisade.dev/metrics": "no"}), json!({})),
        Some(&ns),
        &native,
    );
    assert_eq!(r["allowed"], false);
    assert!(r["status"]["message"]
        .as_str()
        .unwrap()
        .contains("palisade.dev/metrics"));
    // And the app may not take the port.
    let clash = pod(
        json!({}),
        json!({"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 7491}]}]}),
    );
    assert_eq!(answer(&clash, Some(&ns), &native)["allowed"], false);
}
