//! `palisade generate NAMESPACE PATH... --flows FILE` (or from the flows the controllers
//! keep: `--controller URL`, `--lab DIR`): least-privilege NetworkPolicies for a namespace
//! from the flows that were observed, checked by judging every flow again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use palisade_policy::diff::FlowChange;
use palisade_policy::flows::{Filter, FlowRecord};
use palisade_policy::generate::{propose, verify};
use palisade_policy::ports::Protocol;
use palisade_policy::simulate::{SimFlow, Simulation};

use crate::flows::{collect, Ask, Reach};
use crate::load::load;
use crate::EXIT_BAD_INPUT;

/// How to print the policies.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Output {
    /// A YAML stream for `kubectl apply -f -`.
    #[default]
    Yaml,
    /// A JSON list of the manifests.
    Json,
}

/// Arguments of `palisade generate`.
#[derive(clap::Args)]
pub struct Args {
    /// The namespace to propose policies for; its policies in the manifests are replaced.
    namespace: String,
    /// Manifest files or folders: the pods and namespaces (and the other namespaces'
    /// policies, which stay as they are); with --lab, the lab's by default.
    paths: Vec<PathBuf>,
    /// The observed flows: `palisade lab -o json` output, or any `{"flows": [{"from", "to",
    /// "port", "protocol", "allowed"}]}` (flows that were let through in audit mode count as
    /// allowed).
    #[arg(long, conflicts_with_all = ["controllers", "lab"])]
    flows: Option<PathBuf>,
    /// Or the flows the controllers observed (each replica's, merged).
    #[command(flatten)]
    reach: Reach,
    /// With --controller or --lab: flows received this long ago at most.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    since: Duration,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

fn lines(title: &str, changes: &[FlowChange]) {
    if changes.is_empty() {
        return;
    }
    eprintln!("{title}:");
    for c in changes {
        eprintln!("  {} -> {} {}/{}", c.from, c.to, c.port, c.protocol);
    }
}

/// The pod-to-pod flows among `records`: one per source, destination, port and protocol,
/// allowed unless a proxy denied it.
fn observed(records: &[FlowRecord]) -> Simulation {
    let mut flows: BTreeMap<(String, String, u16, Protocol), bool> = BTreeMap::new();
    for r in records {
        let (Some(from), Some(to)) = (&r.source, &r.destination) else {
            continue;
        };
        let allowed = flows
            .entry((from.key(), to.key(), r.dst.port(), r.protocol))
            .or_insert(true);
        *allowed &= r.action.passes();
    }
    Simulation {
        flows: flows
            .into_iter()
            .map(|((from, to, port, protocol), allowed)| SimFlow {
                from,
                to,
                port,
                protocol,
                family: Default::default(),
                allowed,
                egress: Default::default(),
                ingress: Default::default(),
            })
            .collect(),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let paths = match (args.reach.lab()?, args.paths.is_empty()) {
        (Some(lab), true) => vec![lab.manifests],
        _ => args.paths.clone(),
    };
    let loaded = load(&paths)?;
    loaded.print_report();
    let cluster = &loaded.cluster;
    let observed: Simulation = match &args.flows {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: not a flows file ({{\"flows\": [{{\"from\", \"to\", \"port\", \"protocol\", \"allowed\"}}]}})",
                    file.display()
                )
            })?
        }
        None => {
            let ask = Ask {
                filter: Filter {
                    namespace: Some(args.namespace.clone()),
                    ..Filter::default()
                },
                since: Some(args.since),
                follow: false,
            };
            observed(&collect(&args.reach, &ask)?)
        }
    };
    if !cluster.pods.iter().any(|p| p.namespace == args.namespace) {
        bail!("the manifests hold no pod of namespace {}", args.namespace);
    }
    let unknown = observed
        .flows
        .iter()
        .flat_map(|f| [&f.from, &f.to])
        .filter(|k| {
            k.split_once('/')
                .is_none_or(|(ns, name)| cluster.pod(ns, name).is_none())
        })
        .count();
    if unknown > 0 {
        eprintln!("palisade generate: {unknown} flow ends name no pod of the manifests; left out");
    }
    let proposal = propose(cluster, &observed, &args.namespace);
    let (_, d) = verify(cluster, &proposal, &observed).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("the proposal does not read back: {}", lines.join("; "))
    })?;
    match args.output {
        Output::Yaml => print!("{}", proposal.yaml()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&proposal.policies)?),
    }
    let seen = observed.flows.iter().filter(|f| f.allowed).count();
    eprintln!(
        "palisade generate: {} policies for namespace {} from {seen} allowed flows of {}",
        proposal.policies.len(),
        args.namespace,
        observed.flows.len()
    );
    if d.opened.is_empty() && d.closed.is_empty() && d.audit.is_empty() {
        eprintln!("judged again with them, every observed flow keeps its verdict");
        return Ok(if loaded.report.has_errors() {
            ExitCode::from(EXIT_BAD_INPUT)
        } else {
            ExitCode::SUCCESS
        });
    }
    eprintln!(
        "judged again with them, some flows differ from what was observed (pods that share \
         their labels cannot be told apart by a policy):"
    );
    lines("allowed, though not observed", &d.opened);
    lines("observed, but denied", &d.closed);
    lines("allowed only by audit mode", &d.audit);
    Ok(ExitCode::from(1))
}
