//! `palisade explain NS/POD PATH...`: everything that applies to one pod, in words, and its
//! flows as a compact matrix.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use palisade::matrix::{Cell, LEGEND};
use palisade_policy::cluster::Pod;
use palisade_policy::compiled::Mode;
use palisade_policy::policy::Direction;
use palisade_policy::reach::{reach, DirectionReach, PodReach, PortReach, RuleReach};

use crate::check::Output;
use crate::load::load;
use crate::EXIT_BAD_INPUT;

/// Arguments of `palisade explain`.
#[derive(clap::Args)]
pub struct Args {
    /// The pod, as NAMESPACE/NAME.
    pod: String,
    /// Manifest files or folders (YAML or JSON, read recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.paths)?;
    loaded.print_report();
    let cluster = &loaded.cluster;
    let pod = args
        .pod
        .split_once('/')
        .and_then(|(ns, name)| cluster.pod(ns, name))
        .ok_or_else(|| {
            let known: Vec<String> = cluster.pods.iter().map(Pod::key).collect();
            anyhow!(
                "no pod {} in the manifests (give it as NAMESPACE/NAME); the pods are: {}",
                args.pod,
                known.join(", ")
            )
        })?;
    let r = reach(cluster, pod);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Output::Text => print!("{}", render(&r)),
    }
    Ok(if loaded.report.has_errors() {
        ExitCode::from(EXIT_BAD_INPUT)
    } else {
        ExitCode::SUCCESS
    })
}

/// Everything about the pod, in sentences, then its flows.
pub fn render(r: &PodReach) -> String {
    let mut out = String::new();
    let ips: Vec<String> = r.ips.iter().map(|ip| ip.to_string()).collect();
    let _ = write!(out, "{} ({}", r.pod, ips.join(", "));
    if !r.node.is_empty() {
        let node: Vec<String> = r.node.iter().map(|ip| ip.to_string()).collect();
        let _ = write!(out, ", on node {}", node.join(", "));
    }
    out.push_str(")\n");
    let mode = match r.mode {
        Mode::Enforce => "enforce mode",
        Mode::Audit => "audit mode: what policies deny is logged as would-deny and let through",
    };
    let injected = match (r.host_network, r.injected) {
        (true, _) => "on the node's network: no policy isolates it",
        (false, true) => "injected (palisade.dev/inject)",
        (false, false) => {
            "NOT injected: no palisade sidecar enforces what follows (set palisade.dev/inject)"
        }
    };
    let _ = writeln!(out, "{mode}; {injected}\n");
    side(&mut out, r, &r.egress);
    side(&mut out, r, &r.ingress);
    flows(&mut out, r);
    out
}

fn ports(ports: &[PortReach]) -> String {
    if ports.is_empty() {
        return "every port".into();
    }
    let words: Vec<String> = ports
        .iter()
        .map(|p| {
            let mut s = p.text.clone();
            if !p.http.is_empty() {
                let _ = write!(s, " (only HTTP {})", p.http.join("; "));
            }
            if !p.dns.is_empty() {
                let _ = write!(s, " (only DNS names {})", p.dns.join(", "));
            }
            if !p.server_names.is_empty() {
                let _ = write!(s, " (only TLS to {})", p.server_names.join(", "));
            }
            s
        })
        .collect();
    words.join(", ")
}

fn rule(out: &mut String, file: &str, policy: &str, kind: &str, r: &RuleReach) {
    let peers: Vec<String> = match &r.peers {
        None => vec!["every peer, any address".into()],
        Some(list) if list.is_empty() => vec!["no peer (this rule allows nothing)".into()],
        Some(list) => list
            .iter()
            .map(|p| {
                let pods = if p.pods.is_empty() {
                    String::new()
                } else {
                    format!(" (now: {})", p.pods.join(", "))
                };
                format!("{}{pods}", p.text)
            })
            .collect(),
    };
    let _ = writeln!(
        out,
        "    - {} on {}",
        peers.join("\n      or "),
        ports(&r.ports)
    );
    let _ = writeln!(
        out,
        "      {kind} {policy} rule {} ({file}:{})",
        r.index, r.line
    );
}

fn side(out: &mut String, r: &PodReach, d: &DirectionReach) {
    let (verb, always) = match d.direction {
        Direction::Egress => ("it may reach", "itself and its node, always"),
        Direction::Ingress => ("may reach it", "itself and its node, always"),
    };
    let enforced: Vec<&str> = d
        .policies
        .iter()
        .filter(|p| !p.staged)
        .map(|p| p.name.as_str())
        .collect();
    if !d.isolated {
        let what = match d.direction {
            Direction::Egress => "it may reach every address on every port",
            Direction::Ingress => "every address may reach it on every port",
        };
        let _ = writeln!(out, "{}: not isolated: {what}", d.direction);
    } else {
        let _ = writeln!(
            out,
            "{}: isolated by {}\n  {verb}:",
            d.direction,
            enforced.join(", ")
        );
    }
    let mut allow_nothing = Vec::new();
    for p in &d.policies {
        let staged = if p.staged {
            " (staged: judged and logged, not enforced)"
        } else {
            ""
        };
        if p.rules.is_empty() {
            allow_nothing.push(format!("{}{staged}", p.name));
        }
        if p.staged && !p.rules.is_empty() {
            let _ = writeln!(out, "  staged, not enforced:");
        }
        for rl in &p.rules {
            rule(out, &p.file, &p.name, p.kind, rl);
        }
    }
    if d.isolated {
        if d.policies.iter().all(|p| p.rules.is_empty()) {
            out.push_str("    nothing\n");
        }
        let _ = writeln!(out, "  and nothing else but {always}");
    }
    match allow_nothing.as_slice() {
        [] => {}
        [one] => {
            let _ = writeln!(
                out,
                "  {one} allows nothing by itself; it isolates {}",
                r.pod
            );
        }
        many => {
            let _ = writeln!(
                out,
                "  {} allow nothing by themselves; they isolate {}",
                many.join(", "),
                r.pod
            );
        }
    }
    out.push('\n');
}

/// The pod's flows, one line per peer pod: each port with its cell.
fn flows(out: &mut String, r: &PodReach) {
    if r.flows.is_empty() {
        out.push_str("flows: none (no pod declares a container port)\n");
        return;
    }
    let _ = writeln!(out, "flows ({LEGEND}):");
    for (title, outgoing) in [("to", true), ("from", false)] {
        let mut rows: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for f in r.flows.iter().filter(|f| (f.from == r.pod) == outgoing) {
            let peer = if outgoing { &f.to } else { &f.from };
            let cell = Cell::of(f).text();
            rows.entry(peer)
                .or_default()
                .push(format!("{}/{} {cell}", f.port, f.protocol));
        }
        if rows.is_empty() {
            continue;
        }
        let width = rows.keys().map(|k| k.len()).max().unwrap_or(0);
        let _ = writeln!(out, "  {title}");
        for (peer, cells) in rows {
            let _ = writeln!(out, "    {peer:width$}  {}", cells.join("  "));
        }
    }
}
