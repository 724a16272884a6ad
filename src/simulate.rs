//! `palisade simulate`: the reachability matrix of a set of manifests.

use std::path::PathBuf;
use std::process::ExitCode;

use palisade::matrix::{render, Cell, Output, LEGEND};
use palisade_policy::simulate::simulate;

use crate::load::load;
use crate::EXIT_BAD_INPUT;

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
        Output::Table if sim.flows.is_empty() => {
            println!("no flows: no pod declares a container port")
        }
        Output::Table => {
            let cells: Vec<_> = sim.flows.iter().map(|f| (f, Cell::of(f))).collect();
            println!("{LEGEND}");
            print!("{}", render(&loaded.cluster, &cells));
        }
    }
    Ok(if loaded.report.has_errors() {
        ExitCode::from(EXIT_BAD_INPUT)
    } else {
        ExitCode::SUCCESS
    })
}
