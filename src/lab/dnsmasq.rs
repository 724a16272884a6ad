//! The lab's DNS server: dnsmasq (Debian's `dnsmasq-base`), answering for the cluster's
//! Services (`<svc>.<ns>.svc.cluster.local`, their ClusterIPs) and for the lab's external
//! hosts ([`LabHost`] names, addresses and CNAMEs), and `NXDOMAIN` for every other name in
//! those zones. It never forwards anywhere: the lab has no route out.
//!
//! Where it runs is where a cluster runs its DNS: in the pods behind Service
//! `kube-system/kube-dns` when the manifests declare it (every pod's resolv.conf then names
//! the Service's ClusterIP, and the pods' policies judge DNS as they would in a cluster);
//! otherwise in the node, at the node's address.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use palisade_policy::cluster::{Cluster, Pod};
use palisade_policy::compiled::ServiceTable;
use palisade_policy::ports::Protocol;

use super::labhost::LabHost;

/// The cluster's domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The Service cluster DNS runs behind.
pub const DNS_SERVICE: &str = "kube-system/kube-dns";

/// Where the lab's DNS server runs and how pods reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The addresses pods resolve through, one per family the DNS server has: the DNS
    /// Service's ClusterIPs, or else the node's addresses.
    pub nameservers: Vec<IpAddr>,
    /// The pods that run it (`namespace/name`) and the port it listens on; empty when it
    /// runs in the node.
    pub pods: Vec<(String, u16)>,
}

impl Placement {
    /// The address in `pod`'s resolv.conf: the nameserver of its primary address's family
    /// (the first one if there is none of that family).
    pub fn nameserver_for(&self, pod: &Pod) -> IpAddr {
        let v6 = pod.ips.first().is_some_and(IpAddr::is_ipv6);
        self.nameservers
            .iter()
            .copied()
            .find(|ip| ip.is_ipv6() == v6)
            .unwrap_or(self.nameservers[0])
    }
}

/// Where the DNS server runs: behind `kube-system/kube-dns` when it has backends on UDP
/// 53, else in the node (at `node_ips`, which are never empty).
pub fn placement(cluster: &Cluster, services: &ServiceTable, node_ips: &[IpAddr]) -> Placement {
    let entries: Vec<_> = services
        .entries()
        .iter()
        .filter(|e| {
            e.service == DNS_SERVICE
                && e.port == 53
                && e.protocol == Protocol::Udp
                && !e.backends.is_empty()
        })
        .collect();
    if entries.is_empty() {
        return Placement {
            nameservers: node_ips.to_vec(),
            pods: Vec::new(),
        };
    }
    let mut nameservers: Vec<IpAddr> = Vec::new();
    for e in &entries {
        if !nameservers.contains(&e.ip) {
            nameservers.push(e.ip);
        }
    }
    let pods: BTreeSet<(String, u16)> = entries
        .iter()
        .flat_map(|e| &e.backends)
        .filter_map(|(ip, port)| {
            cluster
                .pods
                .iter()
                .find(|p| p.ips.contains(ip))
                .map(|p| (p.key(), *port))
        })
        .collect();
    Placement {
        nameservers,
        pods: pods.into_iter().collect(),
    }
}

/// dnsmasq's configuration for the cluster's Services and the lab's hosts.
pub fn config(cluster: &Cluster, hosts: &[LabHost], port: u16) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "port={port}\nno-resolv\nno-hosts\nno-poll\nno-negcache");
    // Answers from this configuration only, NXDOMAIN for other names of its zones.
    let mut zones: BTreeSet<String> = BTreeSet::from([CLUSTER_DOMAIN.to_owned()]);
    for svc in &cluster.services {
        let name = format!("{}.{}.svc.{CLUSTER_DOMAIN}", svc.name, svc.namespace);
        for ip in &svc.cluster_ips {
            let _ = writeln!(c, "host-record={name},{ip},5");
        }
    }
    for host in hosts {
        for name in &host.names {
            for ip in &host.addresses {
                let _ = writeln!(c, "host-record={name},{ip},{}", host.ttl);
            }
        }
        for (alias, target) in &host.cnames {
            let _ = writeln!(c, "cname={alias},{target},{}", host.ttl);
        }
        for name in host.names.iter().chain(host.cnames.iter().map(|(a, _)| a)) {
            if let Some(tld) = name.trim_end_matches('.').rsplit('.').next() {
                zones.insert(tld.to_owned());
            }
        }
    }
    for zone in zones {
        let _ = writeln!(c, "local=/{zone}/");
    }
    c
}

/// A pod's resolv.conf, as the kubelet writes it for `dnsPolicy: ClusterFirst`, with short
/// timeouts so that a refused lookup fails within the lab's probes.
pub fn resolv_conf(namespace: &str, nameserver: IpAddr) -> String {
    format!(
        "search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n\
         nameserver {nameserver}\noptions ndots:5 timeout:1 attempts:2\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_names_services_hosts_and_their_zones() {
        let mut cluster = Cluster::default();
        let mut report = palisade_policy::manifest::Report::default();
        palisade_policy::manifest::load_str(
            &mut cluster,
            "t.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\n\
             spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}\n",
            &mut report,
        );
        cluster.finish();
        let host = LabHost {
            name: "cdn".into(),
            names: vec!["edge.cdn.example".into()],
            addresses: vec!["203.0.113.7".parse().unwrap()],
            ports: vec![443],
            ttl: 2,
            cnames: vec![("www.shop.test".into(), "edge.cdn.example".into())],
        };
        let c = config(&cluster, &[host], 53);
        for line in [
            "port=53",
            "no-resolv",
            "host-record=api.shop.svc.cluster.local,10.96.0.20,5",
            "host-record=edge.cdn.example,203.0.113.7,2",
            "cname=www.shop.test,edge.cdn.example,2",
            "local=/cluster.local/",
            "local=/example/",
            "local=/test/",
        ] {
            assert!(c.lines().any(|l| l == line), "{line} in\n{c}");
        }
        let r = resolv_conf("shop", "10.96.0.10".parse().unwrap());
        assert!(r.starts_with("search shop.svc.cluster.local svc.cluster.local cluster.local\n"));
        assert!(r.contains("nameserver 10.96.0.10\n"));
    }
}
