//! Pods that could get around their own proxy: a container running as the proxy's uid
//! (whose traffic the rules leave alone), or one that may rewrite the pod's iptables
//! rules or send raw packets (NET_ADMIN, NET_RAW, privileged).

use k8s_openapi::api::core::v1::{Container, Pod};

use super::containers::{INIT_NAME, PROXY_NAME, PROXY_PORTS, PROXY_UID};

/// Capabilities that let an app container undo or sidestep the redirect.
const DANGEROUS: [&str; 2] = ["NET_ADMIN", "NET_RAW"];

/// The pod's own containers and init containers, without palisade's.
pub fn app_containers(pod: &Pod) -> impl Iterator<Item = (&'static str, &Container)> {
    let spec = pod.spec.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| ("init container", c));
    let main = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| ("container", c));
    init.chain(main)
        .filter(|(_, c)| c.name != INIT_NAME && c.name != PROXY_NAME)
}

fn capability_name(c: &str) -> String {
    let upper = c.to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned()
}

/// Every way the pod's containers could bypass the proxy, each as a sentence that says
/// why and how to fix it.
pub fn findings(pod: &Pod) -> Vec<String> {
    let pod_uid = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.run_as_user);
    let mut out = Vec::new();
    for (what, c) in app_containers(pod) {
        let sc = c.security_context.as_ref();
        let uid = sc.and_then(|s| s.run_as_user).or(pod_uid);
        if uid == Some(PROXY_UID) {
            out.push(format!(
                "{what} {:?} runs as uid {PROXY_UID}, the proxy's: its traffic would not go \
                 through the proxy. Run it as another user (securityContext.runAsUser)",
                c.name
            ));
        }
        if sc.and_then(|s| s.privileged) == Some(true) {
            out.push(format!(
                "{what} {:?} is privileged: it could remove the pod's redirect rules. \
                 Drop privileged: true",
                c.name
            ));
        }
        let added: Vec<String> = sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.as_ref())
            .map(|a| a.iter().map(|c| capability_name(c)).collect())
            .unwrap_or_default();
        for cap in DANGEROUS {
            if added.iter().any(|a| a == cap || a == "ALL") {
                out.push(format!(
                    "{what} {:?} adds {cap}: it could {}. Remove {cap} from \
                     securityContext.capabilities.add",
                    c.name,
                    if cap == "NET_ADMIN" {
                        "rewrite the pod's iptables rules"
                    } else {
                        "send raw packets the proxy never sees"
                    }
                ));
            }
        }
    }
    out
}

/// Ports of the pod's containers that the proxy needs for itself.
pub fn port_conflicts(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    for (what, c) in app_containers(pod) {
        for p in c.ports.as_deref().unwrap_or_default() {
            if u16::try_from(p.container_port).is_ok_and(|port| PROXY_PORTS.contains(&port)) {
                out.push(format!(
                    "{what} {:?} declares port {}, which palisade's proxy uses \
                     (7401-7403, 7490 and 7491 are reserved in injected pods): move it",
                    c.name, p.container_port
                ));
            }
        }
    }
    out
}
