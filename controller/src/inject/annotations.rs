//! What a pod and its namespace ask of palisade: the annotations and label of
//! DESIGN.md, read and checked before anything is injected, so a typo is refused at
//! admission with its fix rather than crash-looping the pod's init container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};

/// The pod annotation, or namespace label, that asks for injection.
pub const INJECT: &str = "palisade.dev/inject";
/// The annotation that puts a pod or namespace in audit mode.
pub const MODE: &str = "palisade.dev/mode";
/// Inbound ports that reach the app without the proxy.
pub const SKIP_INBOUND_PORTS: &str = "palisade.dev/skip-inbound-ports";
/// Outbound ports that leave without the proxy.
pub const SKIP_OUTBOUND_PORTS: &str = "palisade.dev/skip-outbound-ports";
/// Outbound destinations reached without the proxy.
pub const SKIP_OUTBOUND_CIDRS: &str = "palisade.dev/skip-outbound-cidrs";
/// Ports whose traffic is never parsed as HTTP.
pub const OPAQUE_PORTS: &str = "palisade.dev/opaque-ports";
/// ICMP echo allowed for the pod.
pub const ALLOW_ICMP: &str = "palisade.dev/allow-icmp";
/// What the proxy does with new flows when no policy arrived in time.
pub const FAIL_MODE: &str = "palisade.dev/fail-mode";
/// `"true"` on a pod or namespace: its `toFQDNs` rules require the allowed name in the TLS
/// server name or HTTP `Host` (the controller compiles it into the pod's policy; the
/// webhook only checks it).
pub const REQUIRE_SNI: &str = palisade_policy::cluster::REQUIRE_SNI_ANNOTATION;
/// How long the proxy keeps DNS records usable after their TTL ran out.
pub const DNS_GRACE: &str = "palisade.dev/dns-grace";
/// How the proxy answers a query DNS rules refuse: `nxdomain` or `refused`.
pub const DNS_REFUSE_WITH: &str = "palisade.dev/dns-refuse-with";
/// `"false"` on a pod: its proxy opens no metrics listener (and the pod gets no
/// `prometheus.io/*` annotations); `"true"` asks for one where the installation has none.
pub const METRICS: &str = "palisade.dev/metrics";
/// Set by the injector on every pod it injected, with the image it used.
pub const INJECTED: &str = "palisade.dev/injected";

/// Whether a pod or namespace enforces its policies or only reports would-be denials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Denied flows are refused.
    #[default]
    Enforce,
    /// Denied flows pass, logged as would-deny.
    Audit,
}

impl Mode {
    /// The annotation's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// What the proxy does with new flows when no policy arrived in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Refuse them.
    #[default]
    Closed,
    /// Let them through.
    Open,
}

impl FailMode {
    /// The flag's and annotation's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Closed => "closed",
            FailMode::Open => "open",
        }
    }
}

/// What the pod asks, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSettings {
    /// The mode: the pod's annotation, else its namespace's, else enforce.
    pub mode: Mode,
    /// `palisade.dev/skip-inbound-ports`, as written.
    pub skip_inbound_ports: Option<String>,
    /// `palisade.dev/skip-outbound-ports`, as written.
    pub skip_outbound_ports: Option<String>,
    /// `palisade.dev/skip-outbound-cidrs`, as written.
    pub skip_outbound_cidrs: Option<String>,
    /// `palisade.dev/opaque-ports`, as written.
    pub opaque_ports: Option<String>,
    /// `palisade.dev/allow-icmp`.
    pub allow_icmp: bool,
    /// `palisade.dev/fail-mode`, when the pod sets it.
    pub fail_mode: Option<FailMode>,
    /// `palisade.dev/dns-grace`, as written.
    pub dns_grace: Option<String>,
    /// `palisade.dev/dns-refuse-with`, as written.
    pub dns_refuse_with: Option<String>,
    /// `palisade.dev/metrics`, when the pod sets it.
    pub metrics: Option<bool>,
    /// The pod's resolvers, when its DNS settings name them (`dnsPolicy: None`): otherwise
    /// the kubelet writes them into every container's /etc/resolv.conf, which init and the
    /// proxy read.
    pub nameservers: Vec<String>,
}

impl PodSettings {
    /// The resolvers as init's `--dns-servers` and the proxy's `--dns-upstreams` take
    /// them, when the pod names them.
    pub fn dns_servers(&self) -> Option<String> {
        (!self.nameservers.is_empty()).then(|| self.nameservers.join(","))
    }
}

fn annotations(pod: &Pod) -> Option<&BTreeMap<String, String>> {
    pod.metadata.annotations.as_ref()
}

/// A pod annotation's value.
pub fn pod_annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    annotations(pod)?.get(key).map(String::as_str)
}

fn namespace_annotation<'a>(ns: Option<&'a Namespace>, key: &str) -> Option<&'a str> {
    ns?.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Whether the pod asks for a proxy: its annotation (`enabled` or `disabled`) decides,
/// else its namespace's label. A value that is neither is reported in `warnings` and
/// ignored.
pub fn wants_injection(pod: &Pod, ns: Option<&Namespace>, warnings: &mut Vec<String>) -> bool {
    let label = ns
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(INJECT))
        .map(String::as_str);
    match pod_annotation(pod, INJECT) {
        Some("enabled") => true,
        Some("disabled") => false,
        Some(other) => {
            warnings.push(format!(
                "annotation {INJECT}: {other:?} is neither \"enabled\" nor \"disabled\"; \
                 it is ignored and the namespace decides"
            ));
            label == Some("enabled")
        }
        None => label == Some("enabled"),
    }
}

fn mode(value: &str, whose: &str) -> Result<Mode, String> {
    match value {
        "enforce" => Ok(Mode::Enforce),
        "audit" => Ok(Mode::Audit),
        other => Err(format!(
            "{whose} annotation {MODE}: {other:?} is not a mode; use \"audit\" or \"enforce\""
        )),
    }
}

/// Reads and checks what the pod asks. An error says which annotation is wrong and what
/// to write instead.
pub fn read(pod: &Pod, ns: Option<&Namespace>) -> Result<PodSettings, Vec<String>> {
    let mut errors = Vec::new();
    let ns_mode = match namespace_annotation(ns, MODE).map(|v| mode(v, "the namespace's")) {
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            errors.push(e);
            Mode::Enforce
        }
        None => Mode::Enforce,
    };
    let mode = match pod_annotation(pod, MODE).map(|v| mode(v, "the pod's")) {
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            errors.push(e);
            ns_mode
        }
        None => ns_mode,
    };
    let mut checked = |key: &'static str, check: fn(&'static str, &[String]) -> Option<String>| {
        let value = pod_annotation(pod, key)?;
        let items: Vec<String> = value
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        match check(key, &items) {
            Some(e) => {
                errors.push(format!("{e}; fix or remove the annotation"));
                None
            }
            None => Some(items.join(",")),
        }
    };
    let ports = |key, items: &[String]| {
        palisade_init::config::parse_ports(key, items)
            .err()
            .map(|e| e.to_string())
    };
    let cidrs = |key, items: &[String]| {
        palisade_init::config::parse_cidrs(key, items)
            .err()
            .map(|e| e.to_string())
    };
    let skip_inbound_ports = checked(SKIP_INBOUND_PORTS, ports);
    let skip_outbound_ports = checked(SKIP_OUTBOUND_PORTS, ports);
    let skip_outbound_cidrs = checked(SKIP_OUTBOUND_CIDRS, cidrs);
    let opaque_ports = checked(OPAQUE_PORTS, ports);
    let allow_icmp = match pod_annotation(pod, ALLOW_ICMP).map(|v| boolean(ALLOW_ICMP, v, "")) {
        None => false,
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            errors.push(e);
            false
        }
    };
    let metrics = match pod_annotation(pod, METRICS).map(|v| boolean(METRICS, v, "")) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => {
            errors.push(e);
            None
        }
    };
    // Read by the controller, from the pod or else its namespace: checked here so that a
    // typo is not silently `false`.
    for (value, whose) in [
        (namespace_annotation(ns, REQUIRE_SNI), "the namespace's "),
        (pod_annotation(pod, REQUIRE_SNI), ""),
    ] {
        if let Some(Err(e)) = value.map(|v| boolean(REQUIRE_SNI, v, whose)) {
            errors.push(e);
        }
    }
    let dns_grace = pod_annotation(pod, DNS_GRACE).and_then(|v| {
        match humantime::parse_duration(v.trim()) {
            Ok(_) => Some(v.trim().to_owned()),
            Err(e) => {
                errors.push(format!(
                    "annotation {DNS_GRACE}: {v:?} is not a duration ({e}); write e.g. \"30s\" or \"2m\""
                ));
                None
            }
        }
    });
    let dns_refuse_with = match pod_annotation(pod, DNS_REFUSE_WITH) {
        None => None,
        Some(v @ ("nxdomain" | "refused")) => Some(v.to_owned()),
        Some(other) => {
            errors.push(format!(
                "annotation {DNS_REFUSE_WITH}: {other:?} is not an answer; use \"nxdomain\" or \"refused\""
            ));
            None
        }
    };
    let fail_mode = match pod_annotation(pod, FAIL_MODE) {
        None => None,
        Some("closed") => Some(FailMode::Closed),
        Some("open") => Some(FailMode::Open),
        Some(other) => {
            errors.push(format!(
                "annotation {FAIL_MODE}: {other:?} is not a fail mode; use \"closed\" or \"open\""
            ));
            None
        }
    };
    let spec = pod.spec.as_ref();
    let nameservers = match spec.and_then(|s| s.dns_policy.as_deref()) {
        Some("None") => spec
            .and_then(|s| s.dns_config.as_ref())
            .and_then(|c| c.nameservers.clone())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PodSettings {
        mode,
        skip_inbound_ports,
        skip_outbound_ports,
        skip_outbound_cidrs,
        opaque_ports,
        allow_icmp,
        fail_mode,
        dns_grace,
        dns_refuse_with,
        metrics,
        nameservers,
    })
}

/// A `"true"` or `"false"` annotation's value; the error names it (`whose`: empty, or
/// `"the namespace's "`).
fn boolean(key: &str, value: &str, whose: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "{whose}annotation {key}: {other:?} is not \"true\" or \"false\""
        )),
    }
}
