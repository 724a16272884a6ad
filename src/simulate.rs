//! `palisade simulate`: the reachability matrix of a set of manifests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use palisade_policy::cluster::Cluster;
use palisade_policy::simulate::{simulate, SimFlow, Simulation};

use crate::load::load;
use crate::EXIT_BAD_INPUT;

/// How to print results.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Output {
    /// Tables for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// Arguments of `palisade simulate`.
#[derive(clap::Args)]
pub struct Args {
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
    let sim = simulate(&loaded.cluster);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&sim)?),
        Output::Table => print!("{}", render_tables(&loaded.cluster, &sim)),
    }
    Ok(if loaded.report.has_errors() {
        ExitCode::from(EXIT_BAD_INPUT)
    } else {
        ExitCode::SUCCESS
    })
}

/// The cell for a flow: `.` allowed, `X` denied, `A` let through only by audit mode.
fn cell(flow: &SimFlow) -> char {
    match (flow.allowed, flow.would_deny()) {
        (false, _) => 'X',
        (true, true) => 'A',
        (true, false) => '.',
    }
}

/// One table per port and protocol, in the style of the upstream e2e reachability tables:
/// rows are sources, columns the pods that declare the port.
pub fn render_tables(cluster: &Cluster, sim: &Simulation) -> String {
    let mut tables: BTreeMap<(&str, u16), BTreeMap<(&str, &str), &SimFlow>> = BTreeMap::new();
    for f in &sim.flows {
        tables
            .entry((f.protocol.as_str(), f.port))
            .or_default()
            .insert((&f.from, &f.to), f);
    }
    let pods: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
    let width = pods.iter().map(String::len).max().unwrap_or(0);
    let mut out = String::new();
    if tables.is_empty() {
        out.push_str("no flows: no pod declares a container port\n");
        return out;
    }
    out.push_str(". allowed   X denied   A denied, but let through by audit mode   - same pod\n");
    for ((protocol, port), cells) in &tables {
        let columns: Vec<String> = cluster
            .pods
            .iter()
            .filter(|p| p.ports.iter().any(|c| c.port == *port && c.protocol.as_str() == *protocol))
            .map(|p| p.key())
            .collect();
        let _ = writeln!(out, "\n{protocol}/{port}");
        let _ = write!(out, "{:width$}", "");
        for c in &columns {
            let _ = write!(out, "  {c}");
        }
        out.push('\n');
        for from in &pods {
            let _ = write!(out, "{from:width$}");
            for to in &columns {
                let mark = if from == to {
                    '-'
                } else {
                    cells.get(&(from.as_str(), to.as_str())).map_or('?', |f| cell(f))
                };
                let _ = write!(out, "  {mark:^w$}", w = to.len());
            }
            out.push('\n');
        }
    }
    out
}
