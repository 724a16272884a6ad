//! The lab's network: one node namespace with a bridge, and one namespace per pod joined
//! to it by a veth. Pods keep the addresses their manifests give them (as /32 and /128;
//! IPv4, IPv6 or both), and route everything of each family they have through the node,
//! which routes each pod address to the bridge, the way Calico lays out a node. The node
//! has an address of each family the pods use. Nothing has a route out of the lab.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr};
use std::process::Stdio;

use palisade_policy::cluster::Pod;
use palisade_policy::compiled::ServiceTable;

use super::netns::{veth, Netns};

/// The node's IPv6 link-local address: the pods' IPv6 gateway.
pub const NODE_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The node and pod namespaces.
pub struct Network {
    /// The node: the bridge, the controller, host-network pods.
    pub node: Netns,
    /// The node's addresses, primary first (every pod's hostIPs).
    pub node_ips: Vec<IpAddr>,
    /// Each pod's namespace by `namespace/name` (host-network pods use the node's).
    pub pods: BTreeMap<String, Netns>,
    /// Each lab host's namespace by name.
    pub hosts: BTreeMap<String, Netns>,
    prefix: String,
}

fn sysctl(ns: &Netns, settings: &[&str]) -> io::Result<()> {
    let status = ns.command("sysctl").arg("-qw").args(settings).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "sysctl {settings:?} failed in {}",
            ns.name()
        )))
    }
}

fn family_len(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "32"
    } else {
        "128"
    }
}

impl Network {
    /// Builds the node and one namespace per pod that does not use the node's network.
    pub fn build(prefix: &str, node_ips: &[IpAddr], pods: &[Pod]) -> io::Result<Network> {
        let node = Netns::new(prefix)?;
        // Addresses come up at once: no duplicate address detection to wait for.
        sysctl(
            &node,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        node.ip(&["link", "add", "br0", "type", "bridge"])?;
        for ip in node_ips {
            let cidr = format!("{ip}/{}", family_len(*ip));
            match ip {
                IpAddr::V4(_) => node.ip(&["addr", "add", &cidr, "dev", "br0"])?,
                IpAddr::V6(_) => node.ip(&["-6", "addr", "add", &cidr, "dev", "br0", "nodad"])?,
            }
        }
        node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{NODE_LINK_LOCAL}/64"),
            "dev",
            "br0",
            "nodad",
        ])?;
        node.ip(&["link", "set", "br0", "up"])?;

        let mut network = Network {
            node,
            node_ips: node_ips.to_vec(),
            pods: BTreeMap::new(),
            hosts: BTreeMap::new(),
            prefix: prefix.to_owned(),
        };
        for (i, pod) in pods.iter().filter(|p| !p.host_network).enumerate() {
            let ns = network.attach(&format!("p{i}"), &pod.ips)?;
            network.pods.insert(pod.key(), ns);
        }
        Ok(network)
    }

    /// Adds a lab host outside the cluster: a namespace with its addresses, on the node's
    /// bridge like a pod.
    pub fn add_host(&mut self, name: &str, ips: &[IpAddr]) -> io::Result<()> {
        let ns = self.attach(&format!("h{}", self.hosts.len()), ips)?;
        self.hosts.insert(name.to_owned(), ns);
        Ok(())
    }

    /// A namespace with these addresses, joined to the node's bridge by the veth `port`
    /// and routed through the node.
    fn attach(&self, port: &str, ips: &[IpAddr]) -> io::Result<Netns> {
        let node_v4 = self.node_ips.iter().find(|ip| ip.is_ipv4());
        let ns = Netns::new(&self.prefix)?;
        {
            sysctl(
                &ns,
                &[
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            )?;
            veth(&self.node, port, &ns, "eth0")?;
            self.node.ip(&["link", "set", port, "master", "br0"])?;
            // The node is reached on the link; everything else goes through it.
            if let Some(node_ip) = node_v4.filter(|_| ips.iter().any(IpAddr::is_ipv4)) {
                ns.ip(&["route", "add", &format!("{node_ip}/32"), "dev", "eth0"])?;
                ns.ip(&[
                    "route",
                    "add",
                    "default",
                    "via",
                    &node_ip.to_string(),
                    "dev",
                    "eth0",
                ])?;
            }
            for ip in ips {
                let cidr = format!("{ip}/{}", family_len(*ip));
                match ip {
                    IpAddr::V4(_) => ns.ip(&["addr", "add", &cidr, "dev", "eth0"])?,
                    IpAddr::V6(_) => {
                        ns.ip(&["-6", "addr", "add", &cidr, "dev", "eth0", "nodad"])?
                    }
                }
                self.node.ip(&["route", "add", &cidr, "dev", "br0"])?;
            }
            if ips.iter().any(IpAddr::is_ipv6) {
                ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &NODE_LINK_LOCAL.to_string(),
                    "dev",
                    "eth0",
                ])?;
            }
        }
        Ok(ns)
    }

    /// The namespace a pod's processes and sockets live in.
    pub fn netns_of(&self, pod: &Pod) -> &Netns {
        self.pods.get(&pod.key()).unwrap_or(&self.node)
    }

    /// Translates Service addresses in the node, the way kube-proxy's iptables mode does:
    /// DNAT to one backend, picked at random.
    pub fn translate_services(&self, services: &ServiceTable) -> io::Result<()> {
        for v4 in [true, false] {
            let mut rules =
                String::from("*nat\n:LAB-SERVICES - [0:0]\n-A PREROUTING -j LAB-SERVICES\n");
            let mut any = false;
            for e in services
                .entries()
                .iter()
                .filter(|e| e.ip.is_ipv4() == v4 && !e.backends.is_empty())
            {
                any = true;
                let n = e.backends.len();
                for (i, (ip, port)) in e.backends.iter().enumerate() {
                    let to = if ip.is_ipv4() {
                        format!("{ip}:{port}")
                    } else {
                        format!("[{ip}]:{port}")
                    };
                    let chance = if i + 1 < n {
                        format!(
                            "-m statistic --mode random --probability {:.5} ",
                            1.0 / (n - i) as f64
                        )
                    } else {
                        String::new()
                    };
                    let proto = e.protocol.as_str().to_ascii_lowercase();
                    let _ = writeln!(
                        rules,
                        "-A LAB-SERVICES -d {}/{} -p {proto} -m {proto} --dport {} {chance}-j DNAT --to-destination {to}",
                        e.ip,
                        family_len(e.ip),
                        e.port
                    );
                }
            }
            rules.push_str("COMMIT\n");
            if any {
                let program = if v4 {
                    "iptables-restore"
                } else {
                    "ip6tables-restore"
                };
                let mut child = self
                    .node
                    .command(program)
                    .arg("--noflush")
                    .stdin(Stdio::piped())
                    .spawn()?;
                child
                    .stdin
                    .take()
                    .ok_or_else(|| io::Error::other("no stdin"))?
                    .write_all(rules.as_bytes())?;
                if !child.wait()?.success() {
                    return Err(io::Error::other(format!(
                        "{program} refused the Service rules:\n{rules}"
                    )));
                }
            }
        }
        Ok(())
    }
}
