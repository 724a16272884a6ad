//! A proxy's stream client as the tests and the scale benchmark run it: the proxy's own
//! client (`palisade_proxy::client`) with the settings a proxy has, but no listeners.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use palisade_proxy::config::{CaSource, HttpLimits};

/// The configuration of pod `pod`'s proxy, streaming from `controllers` with the CA file
/// `ca` and the token in `token`.
pub fn config(
    pod: &str,
    pod_ips: Vec<IpAddr>,
    controllers: &[SocketAddr],
    ca: &Path,
    token: &Path,
) -> palisade_proxy::Config {
    palisade_proxy::Config {
        pod: pod.into(),
        pod_ips,
        node_ips: Vec::new(),
        controllers: controllers
            .iter()
            .map(|a| format!("https://{a}").parse().expect("an address"))
            .collect(),
        ca: CaSource::File(ca.to_owned()),
        token_file: token.to_owned(),
        outbound_port: 0,
        inbound_port: 0,
        dns_port: 0,
        admin: "127.0.0.1:0".parse().expect("an address"),
        metrics_port: None,
        flow_reports: true,
        hold: Duration::from_secs(1),
        fail_mode: palisade_proxy::FailMode::Closed,
        dns_upstreams: vec![],
        log_allowed: false,
        udp_idle: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(1),
        http: HttpLimits::default(),
        opaque_ports: Vec::new(),
        dns: Default::default(),
    }
}
