//! `palisade check`: one flow, explained in plain words.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use palisade_policy::cluster::{Cluster, Family, Pod};
use palisade_policy::compile::Compiler;
use palisade_policy::explain::{explain, Explanation, Question, SideExplanation};
use palisade_policy::fqdn::{display, normalize};
use palisade_policy::http::{HeaderMatch, PlainRequest};
use palisade_policy::ports::Protocol;
use palisade_policy::verdict::Action;

use crate::load::load;
use crate::EXIT_BAD_INPUT;

/// How to print the answer.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Output {
    /// Sentences for people.
    #[default]
    Text,
    /// JSON for scripts.
    Json,
}

/// Arguments of `palisade check`.
#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or folders (YAML or JSON, read recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The source: a pod as NAMESPACE/NAME, or an address (a node, a client outside).
    #[arg(long)]
    from: String,
    /// The destination: a pod as NAMESPACE/NAME, or an address (a Service's ClusterIP is
    /// judged against each of its backends).
    #[arg(long)]
    to: String,
    /// The destination port: a number, or a container port name of the destination pod.
    #[arg(long)]
    port: String,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
    /// An HTTP request's method, to judge HTTP rules (default GET when --path is given).
    #[arg(long)]
    method: Option<String>,
    /// An HTTP request's path and query, to judge HTTP rules (default / when --method is
    /// given); normalised as the proxy does.
    #[arg(long)]
    path: Option<String>,
    /// A header of the HTTP request, `Name: value` (repeat for several).
    #[arg(long)]
    header: Vec<String>,
    /// The DNS name the source resolved the destination from (for FQDN rules); also the
    /// request's Host and the TLS server name.
    #[arg(long)]
    host: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(s).ok_or_else(|| format!("{s:?} is not a protocol: use TCP, UDP or SCTP"))
}

/// An end of the flow as the user named it: a pod (by name, or by one of its addresses),
/// or an address that is no pod's.
enum Target<'c> {
    Pod(&'c Pod, Option<IpAddr>),
    Ip(IpAddr),
}

fn resolve<'c>(cluster: &'c Cluster, s: &str) -> anyhow::Result<Target<'c>> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(
            match cluster
                .pods
                .iter()
                .find(|p| p.ips.contains(&ip) && !p.host_network)
            {
                Some(pod) => Target::Pod(pod, Some(ip)),
                None => Target::Ip(ip),
            },
        );
    }
    let Some((ns, name)) = s.split_once('/') else {
        bail!("{s:?} is neither NAMESPACE/POD nor an IP address");
    };
    cluster
        .pod(ns, name)
        .map(|p| Target::Pod(p, None))
        .ok_or_else(|| {
            let known: Vec<String> = cluster.pods.iter().map(Pod::key).collect();
            anyhow!(
                "no pod {s} in the manifests; the pods are: {}",
                known.join(", ")
            )
        })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.paths)?;
    loaded.print_report();
    let cluster = &loaded.cluster;
    let compiler = Compiler::new(cluster);
    let from = resolve(cluster, &args.from)?;
    let to = resolve(cluster, &args.to)?;

    // A ClusterIP is judged against every backend it may lead to, as the proxy picks one.
    let mut destinations: Vec<(Target<'_>, Option<u16>)> = Vec::new();
    let mut service = None;
    match to {
        Target::Ip(ip) if compiler.services().is_service_ip(ip) => {
            let number: u16 = args.port.parse().map_err(|_| {
                anyhow!(
                    "the port of a Service must be a number, not {:?}",
                    args.port
                )
            })?;
            let entry = compiler
                .services()
                .lookup(ip, number, args.protocol)
                .ok_or_else(|| {
                    anyhow!(
                        "Service address {ip} has no port {number}/{}",
                        args.protocol
                    )
                })?;
            if entry.backends.is_empty() {
                bail!(
                    "Service {} has no backends for port {number}/{}",
                    entry.service,
                    args.protocol
                );
            }
            service = Some(entry.service.clone());
            for &(ip, port) in &entry.backends {
                destinations.push((resolve(cluster, &ip.to_string())?, Some(port)));
            }
        }
        other => destinations.push((other, None)),
    }

    // A request the proxy refuses before any rule (its path cannot be normalised) is refused
    // only where the proxy inspects the connection; elsewhere its bytes pass unread.
    let mut refused = None;
    let request = if args.method.is_some() || args.path.is_some() || !args.header.is_empty() {
        let method = args.method.as_deref().unwrap_or("GET");
        let target = args.path.as_deref().unwrap_or("/");
        // The same normal form the proxy judges and forwards; what it refuses, check does too.
        let mut r = PlainRequest::new(method, target).unwrap_or_else(|e| {
            refused = Some(format!("{method} {target}: {e}"));
            PlainRequest {
                method: method.to_owned(),
                path: target.to_owned(),
                ..Default::default()
            }
        });
        // HTTP rules see the host as written in a request: lower case, no final dot.
        r.host = args
            .host
            .as_deref()
            .map(|h| display(&normalize(h)).to_owned());
        for h in &args.header {
            let m = HeaderMatch::parse(h).map_err(|e| anyhow!("--header: {e}"))?;
            r.headers.push((m.name, m.value.unwrap_or_default()));
        }
        Some(r)
    } else {
        None
    };
    let names: Vec<Arc<str>> = args.host.iter().map(|h| Arc::from(normalize(h))).collect();

    let from_policy = match &from {
        Target::Pod(p, _) => Some((compiler.compile(p), p.ips.first().copied())),
        Target::Ip(_) => None,
    };
    let mut answers = Vec::new();
    for (dest, backend_port) in &destinations {
        let (to_policy, to_ips) = match dest {
            Target::Pod(p, ip) => (
                Some(compiler.compile(p)),
                match ip {
                    Some(ip) => vec![*ip],
                    None => addresses_to_judge(p, &from)?,
                },
            ),
            Target::Ip(ip) => (None, vec![*ip]),
        };
        let port = match (backend_port, args.port.parse::<u16>(), dest) {
            (Some(p), _, _) => *p,
            (None, Ok(p), _) => p,
            (None, Err(_), Target::Pod(pod, _)) => {
                pod.named_port(&args.port, args.protocol).ok_or_else(|| {
                    anyhow!(
                        "pod {} declares no {} port named {:?}",
                        pod.key(),
                        args.protocol,
                        args.port
                    )
                })?
            }
            (None, Err(_), Target::Ip(_)) => {
                bail!("a port name needs a pod destination; give a number")
            }
        };
        for to_ip in to_ips {
            let from_ip = match &from {
                Target::Pod(_, Some(ip)) if Family::of(*ip) == Family::of(to_ip) => *ip,
                Target::Pod(p, _) => p
                    .ip_like(to_ip)
                    .ok_or_else(|| anyhow!("pod {} has no address", p.key()))?,
                Target::Ip(ip) => *ip,
            };
            let q = Question {
                from: (from_policy.as_ref().map(|(p, _)| p), from_ip),
                to: (to_policy.as_ref(), to_ip),
                port,
                protocol: args.protocol,
                request: request.as_ref(),
                names: &names,
            };
            answers.push(explain(cluster, &q));
        }
    }

    let inspected = answers
        .iter()
        .flat_map(|a| [&a.egress, &a.ingress])
        .any(|side| side.as_ref().is_some_and(|s| s.l7));
    if let (Some(why), true) = (&refused, inspected) {
        println!("{why}\nverdict: DENIED (400 Bad Request from the proxy, before any rule)");
        return Ok(ExitCode::from(1));
    }
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&answers)?),
        Output::Text => {
            if let Some(svc) = &service {
                println!(
                    "{} is Service {svc}; judged against each of its {} backends\n",
                    args.to,
                    answers.len()
                );
            }
            for a in &answers {
                print!("{}", render(a, request.as_ref()));
            }
        }
    }
    Ok(if loaded.report.has_errors() {
        ExitCode::from(EXIT_BAD_INPUT)
    } else if answers.iter().all(|a| a.allowed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The addresses of a destination pod named by name to judge a flow to: one per family
/// the source can reach it over (a dual-stack pair is judged over each, since policies can
/// treat the two addresses differently), primary first; the primary alone when they share
/// no family.
fn addresses_to_judge(to: &Pod, from: &Target<'_>) -> anyhow::Result<Vec<IpAddr>> {
    let primary = *to
        .ips
        .first()
        .ok_or_else(|| anyhow!("pod {} has no address", to.key()))?;
    let shared: Vec<IpAddr> = to
        .ips
        .iter()
        .copied()
        .filter(|ip| match from {
            Target::Pod(_, Some(from)) | Target::Ip(from) => Family::of(*from) == Family::of(*ip),
            Target::Pod(p, None) => p.ip_of(Family::of(*ip)).is_some(),
        })
        .collect();
    Ok(if shared.is_empty() {
        vec![primary]
    } else {
        shared
    })
}

fn end(name: &Option<String>, ip: IpAddr) -> String {
    match name {
        Some(pod) => format!("{pod} ({ip})"),
        None => ip.to_string(),
    }
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Allow => "allowed",
        Action::Deny => "DENIED",
        Action::WouldDeny => "would be denied (audit mode lets it through)",
    }
}

/// The explanation in sentences.
pub fn render(a: &Explanation, request: Option<&PlainRequest>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{} -> {} port {}/{}",
        end(&a.from.pod, a.from.ip),
        end(&a.to.pod, a.to.ip),
        a.port,
        a.protocol
    );
    if let Some(r) = request {
        let _ = write!(out, ", {} {}", r.method, r.path);
        if let Some(q) = &r.query {
            let _ = write!(out, "?{q}");
        }
    }
    out.push_str("\n\n");
    match &a.egress {
        Some(side) => render_side(&mut out, side, request.is_some()),
        None => out.push_str("egress: the source is not a pod; nothing judges its egress\n\n"),
    }
    match &a.ingress {
        Some(side) => render_side(&mut out, side, request.is_some()),
        None => {
            out.push_str("ingress: the destination is not a pod; nothing judges its ingress\n\n")
        }
    }
    let _ = writeln!(out, "verdict: {}", action_word(a.action));
    out.push('\n');
    out
}

fn render_side(out: &mut String, side: &SideExplanation, judged_request: bool) {
    let _ = writeln!(
        out,
        "{} of {}: {}",
        side.direction,
        side.pod,
        action_word(side.action)
    );
    let _ = writeln!(out, "  because: {}", side.reason);
    if side.l7 && !judged_request {
        out.push_str("  only with L7 conditions: give --method/--path (or --host) to judge them\n");
    }
    for p in &side.policies {
        let staged = if p.staged {
            ", staged in audit mode"
        } else {
            ""
        };
        let _ = writeln!(out, "  {} {}{staged}:", p.kind, p.name);
        if p.rules.is_empty() {
            let _ = writeln!(out, "    no {} rules: allows nothing", side.direction);
        }
        for r in &p.rules {
            let peers = match &r.peers {
                None => "every peer".to_owned(),
                Some(list) if list.is_empty() => "no peer".to_owned(),
                Some(list) => list.join(" | "),
            };
            let ports = if r.ports.is_empty() {
                "every port".to_owned()
            } else {
                r.ports.join(", ")
            };
            let verdict = match (&r.peer_matched, r.port_matched) {
                (Some(peer), true) if peer == "every" => "matches".to_owned(),
                (Some(peer), true) => format!("matches (peer {peer})"),
                (None, true) => "peer does not match".to_owned(),
                (Some(_), false) => "port does not match".to_owned(),
                (None, false) => "neither peer nor port matches".to_owned(),
            };
            let _ = writeln!(out, "    rule {}: {peers}; {ports}: {verdict}", r.index);
            for h in &r.http {
                let _ = writeln!(out, "      http: {h}");
            }
            if !r.server_names.is_empty() {
                let _ = writeln!(out, "      TLS server names: {}", r.server_names.join(", "));
            }
        }
    }
    out.push('\n');
}
