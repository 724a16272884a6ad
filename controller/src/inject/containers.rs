//! The containers palisade adds to a pod, described once: every option `palisade init` and
//! `palisade proxy` get is one line of [`OPTIONS`], passed as the `PALISADE_*` variable
//! their flag reads. The webhook patches pods with these containers and `palisade lab`
//! runs exactly what they say, so a lab test is a test of what the webhook produces.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::annotations::PodSettings;
use super::InjectOptions;

/// Name of the init container that installs the iptables rules.
/// The proxy's token volume.
pub const TOKEN_VOLUME: &str = "palisade-token";
/// Where the proxy's token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/palisade";
/// The token's file in it.
pub const TOKEN_FILE: &str = "token";
/// The audience the controller asks TokenReview for.
pub const TOKEN_AUDIENCE: &str = "palisade";
/// How long a token lives before the kubelet replaces it.
const TOKEN_SECONDS: i64 = 3600;
pub const INIT_NAME: &str = "palisade-init";
/// Name of the proxy container (a native sidecar or the first regular container).
pub const PROXY_NAME: &str = "palisade-proxy";
/// Where the image holds the palisade binary.
pub const BINARY: &str = "/usr/local/bin/palisade";
/// The proxy's uid: its own traffic is not redirected.
pub const PROXY_UID: i64 = 2190;
/// Ports the proxy listens on in the pod (outbound, inbound, DNS, admin, metrics).
pub const PROXY_PORTS: [u16; 5] = [7401, 7402, 7403, 7490, METRICS_PORT];
/// The proxy's metrics listener (`/metrics` only, on the pod's addresses, for Prometheus).
pub const METRICS_PORT: u16 = 7491;
/// The name the proxy container declares its metrics port under (15 characters at most).
pub const METRICS_PORT_NAME: &str = "palisade-prom";
/// The emptyDir the init container gets as `/run` (iptables' lock file), its root file
/// system being read-only.
pub const RUN_VOLUME: &str = "palisade-run";

/// Which of the two containers an option is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `palisade init`.
    Init,
    /// `palisade proxy`.
    Proxy,
}

/// Where an option's value comes from.
#[derive(Clone, Copy)]
pub enum From {
    /// A field of the running pod, through the downward API (`status.podIPs`...).
    Field(&'static str),
    /// The pod's annotations, its DNS settings and the installation's options; `None`
    /// leaves the option to its default.
    Settings(fn(&PodSettings, &InjectOptions) -> Option<String>),
}

/// One option of init or the proxy: the variable its flag reads and where its value
/// comes from.
#[derive(Clone, Copy)]
pub struct Opt {
    /// The container that gets it.
    pub part: Part,
    /// The `PALISADE_*` variable.
    pub env: &'static str,
    /// Its value.
    pub from: From,
}

const fn field(part: Part, env: &'static str, path: &'static str) -> Opt {
    Opt {
        part,
        env,
        from: From::Field(path),
    }
}

const fn setting(
    part: Part,
    env: &'static str,
    f: fn(&PodSettings, &InjectOptions) -> Option<String>,
) -> Opt {
    Opt {
        part,
        env,
        from: From::Settings(f),
    }
}

/// Every option the injected containers get, in the order they are set (a value may refer
/// to an earlier variable as `$(NAME)`, as Kubernetes expands it). Adding an option to
/// init or the proxy is adding its line here.
pub const OPTIONS: &[Opt] = &[
    // palisade init
    setting(Part::Init, "PALISADE_SKIP_INBOUND_PORTS", |s, _| {
        s.skip_inbound_ports.clone()
    }),
    setting(Part::Init, "PALISADE_SKIP_OUTBOUND_PORTS", |s, _| {
        s.skip_outbound_ports.clone()
    }),
    setting(Part::Init, "PALISADE_SKIP_OUTBOUND_CIDRS", |s, _| {
        s.skip_outbound_cidrs.clone()
    }),
    setting(Part::Init, "PALISADE_DNS_SERVERS", |s, _| s.dns_servers()),
    field(Part::Init, "PALISADE_NODE_IPS", "status.hostIPs"),
    setting(Part::Init, "PALISADE_ALLOW_ICMP", |s, _| {
        s.allow_icmp.then(|| "true".into())
    }),
    setting(Part::Init, "PALISADE_METRICS_PORT", metrics_port_option),
    // palisade proxy
    field(Part::Proxy, "PALISADE_POD_NAME", "metadata.name"),
    field(Part::Proxy, "PALISADE_POD_NAMESPACE", "metadata.namespace"),
    setting(Part::Proxy, "PALISADE_POD", |_, _| {
        Some("$(PALISADE_POD_NAMESPACE)/$(PALISADE_POD_NAME)".into())
    }),
    field(Part::Proxy, "PALISADE_POD_IPS", "status.podIPs"),
    field(Part::Proxy, "PALISADE_HOST_IP", "status.hostIP"),
    field(Part::Proxy, "PALISADE_NODE_IPS", "status.hostIPs"),
    setting(Part::Proxy, "PALISADE_CONTROLLER", |_, o| {
        Some(o.controller.clone())
    }),
    setting(Part::Proxy, "PALISADE_FAIL_MODE", |s, o| {
        Some(s.fail_mode.unwrap_or(o.fail_mode).as_str().into())
    }),
    setting(Part::Proxy, "PALISADE_HOLD", |_, o| o.hold.clone()),
    setting(Part::Proxy, "PALISADE_DNS_UPSTREAMS", |s, _| {
        s.dns_servers()
    }),
    setting(Part::Proxy, "PALISADE_OPAQUE_PORTS", |s, _| {
        s.opaque_ports.clone()
    }),
    setting(Part::Proxy, "PALISADE_LOG_ALLOWED", |_, o| {
        o.log_allowed.then(|| "true".into())
    }),
    setting(Part::Proxy, "PALISADE_DNS_GRACE", |s, o| {
        s.dns_grace.clone().or_else(|| o.dns_grace.clone())
    }),
    setting(Part::Proxy, "PALISADE_DNS_REFUSE_WITH", |s, _| {
        s.dns_refuse_with.clone()
    }),
    setting(Part::Proxy, "PALISADE_METRICS_PORT", metrics_port_option),
    // The stream's CA, inline (a Secret of the controller's namespace cannot be mounted
    // in other namespaces), and the projected token the proxy proves its pod with.
    setting(Part::Proxy, "PALISADE_CA", |_, o| o.ca.clone()),
    setting(Part::Proxy, "PALISADE_TOKEN_FILE", |_, _| {
        Some(format!("{TOKEN_DIR}/{TOKEN_FILE}"))
    }),
];

/// The proxy's metrics port in this pod: the installation's, unless the pod's
/// `palisade.dev/metrics` says otherwise.
pub fn metrics_port(settings: &PodSettings, options: &InjectOptions) -> Option<u16> {
    match settings.metrics {
        None => options.metrics_port,
        Some(false) => None,
        Some(true) => Some(options.metrics_port.unwrap_or(METRICS_PORT)),
    }
}

/// `PALISADE_METRICS_PORT` for init and the proxy: unset for the default port, `0` for none.
fn metrics_port_option(settings: &PodSettings, options: &InjectOptions) -> Option<String> {
    match metrics_port(settings, options) {
        Some(METRICS_PORT) => None,
        port => Some(port.unwrap_or(0).to_string()),
    }
}

/// The environment of one container, from [`OPTIONS`].
pub fn env(part: Part, settings: &PodSettings, options: &InjectOptions) -> Vec<EnvVar> {
    OPTIONS
        .iter()
        .filter(|o| o.part == part)
        .filter_map(|o| match o.from {
            From::Field(path) => Some(EnvVar {
                name: o.env.into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: path.into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            From::Settings(f) => f(settings, options).map(|value| EnvVar {
                name: o.env.into(),
                value: Some(value),
                ..Default::default()
            }),
        })
        .collect()
}

/// `palisade ARGS...` as a container command.
fn palisade(args: &[&str]) -> Vec<String> {
    std::iter::once(BINARY)
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

/// An exec probe of the proxy's admin server: kubelet probes reach the pod's address,
/// and the admin server listens on localhost only, so the probe runs inside the pod.
fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(palisade(&["probe", path])),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn quantities(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), Quantity((*v).into())))
            .collect(),
    )
}

/// What init and the proxy request by default: the proxy's idle RSS is about 7 MB.
pub fn default_resources(part: Part) -> ResourceRequirements {
    match part {
        Part::Init => ResourceRequirements {
            requests: quantities(&[("cpu", "10m"), ("memory", "16Mi")]),
            limits: quantities(&[("memory", "64Mi")]),
            ..Default::default()
        },
        Part::Proxy => ResourceRequirements {
            requests: quantities(&[("cpu", "10m"), ("memory", "32Mi")]),
            limits: quantities(&[("memory", "256Mi")]),
            ..Default::default()
        },
    }
}

fn capabilities(add: &[&str]) -> Option<Capabilities> {
    Some(Capabilities {
        add: Some(add.iter().map(|c| (*c).into()).collect()),
        drop: Some(vec!["ALL".into()]),
    })
}

/// The init container: root in the pod's network namespace with only NET_ADMIN (rules and
/// routes) and NET_RAW (iptables-legacy's socket), and nothing else.
pub fn init(settings: &PodSettings, options: &InjectOptions) -> Container {
    Container {
        name: INIT_NAME.into(),
        image: Some(options.image.clone()),
        image_pull_policy: options.pull_policy.clone(),
        command: Some(palisade(&["init"])),
        env: Some(env(Part::Init, settings, options)),
        resources: Some(options.init_resources.clone()),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: capabilities(&["NET_ADMIN", "NET_RAW"]),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: RUN_VOLUME.into(),
            mount_path: "/run".into(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// How the proxy runs alongside the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarKind {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29 and later): it
    /// starts before the app and its init containers, and stops after them, so Jobs end.
    Native,
    /// The first regular container, whose `postStart` hook holds the app back until the
    /// proxy listens (for API servers without native sidecars).
    Container,
}

/// The proxy container, as uid 2190 with NET_RAW only (transparent and raw sockets for
/// UDP). The image's binary carries NET_RAW as a permitted file capability, which needs
/// privilege escalation left allowed (no `no_new_privs`).
pub fn proxy(settings: &PodSettings, options: &InjectOptions, kind: SidecarKind) -> Container {
    let mut c = Container {
        name: PROXY_NAME.into(),
        image: Some(options.image.clone()),
        image_pull_policy: options.pull_policy.clone(),
        command: Some(palisade(&["proxy"])),
        env: Some(env(Part::Proxy, settings, options)),
        resources: Some(options.proxy_resources.clone()),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: capabilities(&["NET_RAW"]),
            ..Default::default()
        }),
        // Listening is enough to start the app: until its first policy arrives the proxy
        // holds new flows, then applies the fail mode. Ready means it has a policy.
        // Declared, so that the pod's port list says what Prometheus scrapes.
        ports: metrics_port(settings, options).map(|port| {
            vec![ContainerPort {
                name: Some(METRICS_PORT_NAME.into()),
                container_port: i32::from(port),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]
        }),
        startup_probe: Some(admin_probe("/live", 1, 120)),
        readiness_probe: Some(admin_probe("/ready", 5, 2)),
        liveness_probe: Some(admin_probe("/live", 10, 3)),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    match kind {
        SidecarKind::Native => c.restart_policy = Some("Always".into()),
        SidecarKind::Container => {
            c.lifecycle = Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(palisade(&["probe", "--wait", "120s", "/live"])),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    c
}

/// The volumes the injected containers mount: `/run` for init, and the proxy's token,
/// bound to the pod, for audience `palisade`, rotated by the kubelet.
pub fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: RUN_VOLUME.into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: TOKEN_FILE.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}
