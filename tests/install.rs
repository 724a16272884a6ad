//! `palisade install` and the Helm chart: every object is a valid Kubernetes object
//! (deserialised into its k8s-openapi type with nothing left over, and accepted by
//! `kubernetes-validate --strict` for Kubernetes 1.37), the chart with default values
//! renders what `palisade install` prints, and the generated TLS material works: the
//! webhook server serves with it and the API server's caBundle verifies it.
//!
//! Needs Go with Debian's sprig and sigs.k8s.io/yaml packages (the chart renderer) and
//! kubernetes-validate (PyPI); scripts/test installs them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use palisade_policy::document::{parse_stream, Node, Value as YamlValue};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_palisade");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const NAMESPACE: &str = "palisade-system";

fn to_json(n: &Node) -> Value {
    match &n.value {
        YamlValue::Null => Value::Null,
        YamlValue::Bool(b) => json!(b),
        YamlValue::Int(i) => json!(i),
        YamlValue::Float(f) => json!(f),
        YamlValue::Str(s) => json!(s),
        YamlValue::Seq(items) => Value::Array(items.iter().map(to_json).collect()),
        YamlValue::Map(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

fn documents(yaml: &str) -> Vec<Value> {
    parse_stream(yaml)
        .into_iter()
        .map(|d| to_json(&d.root.expect("valid YAML").expect("a document")))
        .collect()
}

fn install(args: &[&str]) -> String {
    let out = Command::new(BINARY)
        .arg("install")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The chart renderer, built once per test run.
fn renderer() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chart-render");
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(Path::new(ROOT).join("charts/render"))
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env(
                "GOCACHE",
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-cache"),
            )
            .status()
            .expect("go is needed to render the chart (scripts/test installs golang-go)");
        assert!(status.success(), "building charts/render failed");
        out
    })
}

fn render(values: Option<&str>) -> String {
    let mut cmd = Command::new(renderer());
    cmd.arg(Path::new(ROOT).join("charts/palisade"))
        .args(["palisade", NAMESPACE]);
    let file;
    if let Some(v) = values {
        file = tempfile(v);
        cmd.arg(&file);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tempfile(text: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "install-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, text).unwrap();
    p
}

/// Deserialises into `T` and back: a field `T` does not know is lost on the way, so the
/// two must be equal.
fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).unwrap();
    match first_difference(v, &back, "") {
        None => Ok(()),
        Some(d) => Err(format!("lost or changed on the way through its type: {d}")),
    }
}

/// The path of the first place two values differ, with both sides.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .keys()
            .chain(y.keys().filter(|k| !x.contains_key(*k)))
            .find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, &format!("{path}.{k}")),
                (p, q) => Some(format!("{path}.{k}: {p:?} != {q:?}")),
            }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}[{i}]"))),
        // The schema's `maximum` is a float in its type: 65535 and 65535.0 are one number.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} != {b}")),
    }
}

fn strict(v: &Value) -> Result<(), String> {
    use k8s_openapi::api::admissionregistration::v1 as adm;
    use k8s_openapi::api::{apps, core, policy, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    match (
        v["apiVersion"].as_str().unwrap(),
        v["kind"].as_str().unwrap(),
    ) {
        ("v1", "Namespace") => round_trip::<core::v1::Namespace>(v),
        ("v1", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(v),
        ("v1", "Secret") => round_trip::<core::v1::Secret>(v),
        ("v1", "Service") => round_trip::<core::v1::Service>(v),
        ("v1", "ConfigMap") => round_trip::<core::v1::ConfigMap>(v),
        ("apps/v1", "Deployment") => round_trip::<apps::v1::Deployment>(v),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<policy::v1::PodDisruptionBudget>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<rbac::v1::ClusterRole>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<rbac::v1::ClusterRoleBinding>(v)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<rbac::v1::Role>(v),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<rbac::v1::RoleBinding>(v),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<ext::CustomResourceDefinition>(v)
        }
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            round_trip::<adm::MutatingWebhookConfiguration>(v)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
            round_trip::<adm::ValidatingWebhookConfiguration>(v)
        }
        (api, kind) => Err(format!("{api} {kind} is not an expected kind")),
    }
}

fn assert_strict(objects: &[Value]) {
    for o in objects {
        if let Err(e) = strict(o) {
            panic!("{} {}: {e}", o["kind"], o["metadata"]["name"]);
        }
    }
}

/// `kubernetes-validate --strict` against Kubernetes 1.37: whether it accepts the file.
fn kubernetes_validate(yaml: &str) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(tempfile(yaml))
        .output()
        .expect("kubernetes-validate is needed (scripts/test installs it from PyPI)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn key(o: &Value) -> String {
    format!(
        "{} {}/{}",
        o["kind"].as_str().unwrap(),
        o["metadata"]["namespace"].as_str().unwrap_or(""),
        o["metadata"]["name"].as_str().unwrap()
    )
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn base64_decode(s: &str) -> Vec<u8> {
    serde_json::from_value::<k8s_openapi::ByteString>(json!(s))
        .unwrap()
        .0
}

/// The generated TLS material: the serving certificate and key, and the CA the webhook
/// configurations carry (checked to be the Secret's).
struct Material {
    cert: String,
    key: String,
    ca: String,
}

fn material(objects: &[Value]) -> Material {
    let secret = find(objects, "Secret", "palisade-tls");
    let text =
        |k: &str| String::from_utf8(base64_decode(secret["data"][k].as_str().unwrap())).unwrap();
    let m = Material {
        cert: text("tls.crt"),
        key: text("tls.key"),
        ca: text("ca.crt"),
    };
    for (kind, name) in [
        ("MutatingWebhookConfiguration", "palisade-inject"),
        ("ValidatingWebhookConfiguration", "palisade-validate"),
    ] {
        for hook in find(objects, kind, name)["webhooks"].as_array().unwrap() {
            let bundle = hook["clientConfig"]["caBundle"].as_str().unwrap();
            assert_eq!(
                String::from_utf8(base64_decode(bundle)).unwrap(),
                m.ca,
                "{name}"
            );
        }
    }
    m
}

fn pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn roots(ca: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca) {
        roots.add(c).unwrap();
    }
    roots
}

/// Whether the CA verifies the serving certificate for the Service's names, as the API
/// server does when it calls the webhook.
fn verify(m: &Material) {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(&m.ca)),
        provider,
    )
    .build()
    .unwrap();
    let chain = pem_certs(&m.cert);
    for name in [
        "palisade.palisade-system.svc",
        "palisade.palisade-system.svc.cluster.local",
    ] {
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // A negative control: another Service's name does not verify.
    assert!(verifier
        .verify_server_cert(
            &chain[0],
            &[],
            &ServerName::try_from("palisade.other.svc").unwrap(),
            &[],
            UnixTime::now()
        )
        .is_err());
}

/// Replaces what is generated afresh on every run, to compare the rest.
fn masked(objects: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = objects
        .iter()
        .cloned()
        .map(|mut o| {
            if o["kind"] == "Secret" {
                o["data"] = json!("<generated>");
            }
            if let Some(hooks) = o["webhooks"].as_array_mut() {
                for h in hooks {
                    h["clientConfig"]["caBundle"] = json!("<generated>");
                }
            }
            o
        })
        .collect();
    out.sort_by_key(key);
    out
}

#[test]
fn every_object_install_prints_is_a_valid_kubernetes_object() {
    let yaml = install(&["--inject", "shop,web", "--mode", "audit"]);
    let objects = documents(&yaml);
    let kinds: Vec<String> = objects.iter().map(key).collect();
    for expected in [
        "Namespace /palisade-system",
        "CustomResourceDefinition /palisadepolicies.palisade.dev",
        "ClusterRole /palisade-controller",
        "Deployment palisade-system/palisade-controller",
        "PodDisruptionBudget palisade-system/palisade-controller",
        "Service palisade-system/palisade",
        "Secret palisade-system/palisade-tls",
        "MutatingWebhookConfiguration /palisade-inject",
        "ValidatingWebhookConfiguration /palisade-validate",
        "Namespace /shop",
        "Namespace /web",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} in {kinds:#?}"
        );
    }
    assert_strict(&objects);
    let (ok, report) = kubernetes_validate(&yaml);
    assert!(ok, "{report}");

    let shop = find(&objects, "Namespace", "shop");
    assert_eq!(shop["metadata"]["labels"]["palisade.dev/inject"], "enabled");
    assert_eq!(
        shop["metadata"]["annotations"]["palisade.dev/mode"],
        "audit"
    );
    let deployment = find(&objects, "Deployment", "palisade-controller");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert!(c["readinessProbe"].is_object() && c["livenessProbe"].is_object());
    assert!(c["resources"]["requests"]["memory"].is_string());
    let hooks = &find(&objects, "MutatingWebhookConfiguration", "palisade-inject")["webhooks"];
    assert_eq!(hooks[0]["failurePolicy"], "Fail");
    assert_eq!(hooks[1]["failurePolicy"], "Ignore");
    verify(&material(&objects));

    // Negative controls: a misspelt field fails both checks.
    let mut bad = deployment.clone();
    bad["spec"]["replica"] = json!(2);
    assert!(strict(&bad).unwrap_err().contains("replica"));
    let (ok, _) = kubernetes_validate(&serde_json::to_string(&bad).unwrap());
    assert!(!ok, "kubernetes-validate accepts a misspelt field");
}

#[test]
fn the_chart_with_default_values_renders_what_install_prints() {
    let chart = documents(&render(None));
    assert_strict(&chart);
    let (ok, report) = kubernetes_validate(&render(None));
    assert!(ok, "{report}");
    verify(&material(&chart));

    let installed: Vec<Value> = documents(&install(&[]))
        .into_iter()
        // Helm creates the release's namespace itself (--create-namespace).
        .filter(|o| !(o["kind"] == "Namespace" && o["metadata"]["name"] == NAMESPACE))
        .collect();
    let (a, b) = (masked(&chart), masked(&installed));
    assert_eq!(
        a.iter().map(key).collect::<Vec<_>>(),
        b.iter().map(key).collect::<Vec<_>>()
    );
    for (c, i) in a.iter().zip(&b) {
        if let Some(d) = first_difference(c, i, "") {
            panic!("{} differs between the chart and install: {d}", key(c));
        }
    }
}

#[test]
fn the_chart_with_values_renders_what_install_prints_with_flags() {
    let values = "injectNamespaces: [shop]\nmode: audit\nfailMode: open\nproxyMetricsPort: 9102\n\
                  webhooks: {inject: {failurePolicy: Ignore}, validate: {failurePolicy: Fail}}\n\
                  image: {repository: registry.example/palisade, tag: \"1.2\"}\n";
    let chart = documents(&render(Some(values)));
    assert_strict(&chart);
    let installed: Vec<Value> = documents(&install(&[
        "--inject",
        "shop",
        "--mode",
        "audit",
        "--fail-mode",
        "open",
        "--proxy-metrics-port",
        "9102",
        "--inject-failure-policy",
        "ignore",
        "--validate-failure-policy",
        "fail",
        "--image",
        "registry.example/palisade:1.2",
    ]))
    .into_iter()
    .filter(|o| !(o["kind"] == "Namespace" && o["metadata"]["name"] == NAMESPACE))
    .collect();
    let (a, b) = (masked(&chart), masked(&installed));
    assert_eq!(a.len(), b.len());
    for (c, i) in a.iter().zip(&b) {
        if let Some(d) = first_difference(c, i, "") {
            panic!("{} differs between the chart and install: {d}", key(c));
        }
    }
}

#[test]
fn the_chart_can_take_its_tls_from_cert_manager() {
    let chart = documents(&render(Some("tls: {certManager: {enabled: true}}\n")));
    assert!(!chart.iter().any(|o| o["kind"] == "Secret"));
    let cert = find(&chart, "Certificate", "palisade-tls");
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["spec"]["secretName"], "palisade-tls");
    assert_eq!(
        cert["spec"]["dnsNames"],
        json!([
            "palisade.palisade-system.svc",
            "palisade.palisade-system.svc.cluster.local"
        ])
    );
    assert_eq!(cert["spec"]["issuerRef"]["name"], "palisade-ca");
    assert_eq!(
        find(&chart, "Certificate", "palisade-ca")["spec"]["isCA"],
        true
    );
    for (kind, name) in [
        ("MutatingWebhookConfiguration", "palisade-inject"),
        ("ValidatingWebhookConfiguration", "palisade-validate"),
    ] {
        let hook = find(&chart, kind, name);
        assert_eq!(
            hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "palisade-system/palisade-tls"
        );
        assert!(hook["webhooks"][0]["clientConfig"]
            .get("caBundle")
            .is_none());
    }
    // The Kubernetes objects stay valid; cert-manager's own kinds are its CRDs'.
    let core: Vec<Value> = chart
        .into_iter()
        .filter(|o| o["apiVersion"] != "cert-manager.io/v1")
        .collect();
    assert_strict(&core);

    // An existing issuer: only the serving Certificate.
    let chart = documents(&render(Some(
        "tls: {certManager: {enabled: true, issuer: corp-ca, issuerKind: ClusterIssuer}}\n",
    )));
    let certs: Vec<&Value> = chart
        .iter()
        .filter(|o| o["kind"] == "Certificate")
        .collect();
    assert_eq!(certs.len(), 1);
    assert_eq!(
        certs[0]["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer"})
    );
}

#[test]
fn the_chart_can_install_the_grafana_dashboard() {
    assert!(
        !documents(&render(None))
            .iter()
            .any(|o| o["kind"] == "ConfigMap"),
        "off by default"
    );
    let yaml = render(Some("dashboards: {enabled: true}\n"));
    let chart = documents(&yaml);
    let map = find(&chart, "ConfigMap", "palisade-dashboard");
    assert_eq!(map["metadata"]["namespace"], "palisade-system");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        map["data"]["palisade.json"]
            .as_str()
            .expect("the dashboard as text"),
    )
    .expect("the ConfigMap holds the dashboard's JSON");
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("charts/palisade/dashboards/palisade.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, file);
    assert_strict(&chart);
    let (ok, report) = kubernetes_validate(&yaml);
    assert!(ok, "{report}");
}

#[test]
fn the_charts_crd_is_the_one_install_prints() {
    let file =
        std::fs::read_to_string(Path::new(ROOT).join("charts/palisade/crds/palisadepolicies.yaml"))
            .unwrap();
    assert_eq!(
        documents(&file),
        documents(&install(&["--crd-only"])),
        "regenerate charts/palisade/crds/palisadepolicies.yaml with `palisade install --crd-only`"
    );
}

/// The webhook server with install's Secret, called as the API server calls it: over TLS,
/// trusting only the configuration's caBundle, at the Service's name.
#[test]
fn the_webhooks_serve_with_the_generated_tls_and_refuse_a_bad_policy() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use palisade_controller::inject::{InjectOptions, SidecarKind};
    use palisade_controller::tls::CertFiles;
    use palisade_controller::webhook::{serve, Webhook};

    let objects = documents(&install(&[]));
    let m = material(&objects);
    let (cert, key) = (tempfile(&m.cert), tempfile(&m.key));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hook = Webhook {
            inject: InjectOptions::new("palisade:test".into(), "https://x:7443".into(), SidecarKind::Native),
            client: None,
        };
        let tls = CertFiles::new(cert, key).unwrap().server_config();
        tokio::spawn(serve(listener, tls, Arc::new(hook)));

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&m.ca))
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let post = |path: &'static str, body: Value| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("palisade.palisade-system.svc").unwrap();
                let tls = connector.connect(name, tcp).await.expect("the CA verifies the server");
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
                tokio::spawn(conn);
                let req = http::Request::post(path)
                    .header("content-type", "application/json")
                    .body(Full::new(bytes::Bytes::from(body.to_string())))
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                serde_json::from_slice::<Value>(&body).unwrap()
            }
        };
        let review = |object: Value, kind: Value| {
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
                "uid": "1f2e3d4c", "kind": kind, "resource": {"group": "palisade.dev", "version": "v1alpha1", "resource": "palisadepolicies"},
                "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "alice"}, "object": object}})
        };
        let bad = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PalisadePolicy",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "api"}},
                     "egress": [{"toServices": [{"k8sService": {"serviceName": "db"}}], "toPorts": [{"ports": [{"port": "5432"}]}]}]}});
        let kind = json!({"group": "palisade.dev", "version": "v1alpha1", "kind": "PalisadePolicy"});
        let answer = post("/validate", review(bad, kind.clone())).await;
        let r = &answer["response"];
        assert_eq!(r["uid"], "1f2e3d4c");
        assert_eq!(r["allowed"], false);
        assert_eq!(
            r["status"]["message"],
            "PalisadePolicy shop/api: spec.egress[0].toServices: toServices is not supported by palisade; remove it or express it with toEndpoints, toCIDR or toEntities"
        );
        // The positive control: the same policy without the field is admitted.
        let good = json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "PalisadePolicy",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "api"}},
                     "egress": [{"toEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "5432"}]}]}]}});
        let answer = post("/validate", review(good, kind)).await;
        assert_eq!(answer["response"]["allowed"], true, "{answer:#}");
        // A NetworkPolicy with the classic OR-for-AND mistake: admitted, with a warning.
        let np = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"name": "web"}}}, {"podSelector": {"matchLabels": {"app": "api"}}}]}]}});
        let answer = post("/validate", review(np, json!({"group": "networking.k8s.io", "version": "v1", "kind": "NetworkPolicy"}))).await;
        assert_eq!(answer["response"]["allowed"], true);
        let warnings = answer["response"]["warnings"].to_string();
        assert!(warnings.contains("two peers (OR)"), "{warnings}");
        assert!(warnings.contains("kubernetes.io/metadata.name"), "{warnings}");
    });
}
