//! `palisade lab PATH...`: build the lab, probe every flow, print observed against
//! expected, and tear everything down (or keep it up with `--keep` until Ctrl-C).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use palisade_policy::simulate::Simulation;

use super::{interrupted, Lab, LabOptions, Observed};
use crate::matrix::{render, Cell, Output, LEGEND};

/// Arguments of `palisade lab`.
#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or folders (YAML or JSON, read recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Inject only pods that ask for it (annotation palisade.dev/inject: enabled, or the
    /// namespace label palisade.dev/inject=enabled), as a cluster would; default: all pods.
    #[arg(long)]
    respect_injection: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
    /// Leave the lab up after probing, until Ctrl-C, to look around in it.
    #[arg(long)]
    keep: bool,
    /// How long proxies hold new flows before their first policy.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Proxies log allowed flows and HTTP requests too, not only denied ones.
    #[arg(long)]
    log_allowed: bool,
    /// How long proxies keep DNS records usable after their TTL ran out.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    dns_grace: Duration,
}

/// Prints the comparison; returns how many flows differ.
fn print_table(lab: &Lab, observed: &[Observed]) -> usize {
    let cells: Vec<_> = observed
        .iter()
        .map(|o| {
            let cell = match o.observed {
                None => Cell::NotProbed,
                Some(seen) if seen != o.expected.allowed => Cell::Differs(seen),
                Some(_) => Cell::of(&o.expected),
            };
            (&o.expected, cell)
        })
        .collect();
    println!("{LEGEND}   ? not probed (SCTP)   [.] [X] observed, differing from expected");
    print!("{}", render(lab.cluster(), &cells));
    let differ: Vec<&Observed> = observed.iter().filter(|o| o.differs()).collect();
    let probed = observed.iter().filter(|o| o.observed.is_some()).count();
    println!();
    for o in &differ {
        let f = &o.expected;
        println!(
            "differs: {} -> {} {}/{} over {}: expected {}, observed {}",
            f.from,
            f.to,
            f.port,
            f.protocol,
            f.family,
            if f.allowed { "allowed" } else { "denied" },
            if f.allowed { "denied" } else { "allowed" },
        );
    }
    let sctp = observed.len() - probed;
    let not_probed = if sctp > 0 {
        format!("; {sctp} SCTP flows not probed")
    } else {
        String::new()
    };
    println!(
        "{} of {probed} probed flows as expected{not_probed}",
        probed - differ.len()
    );
    differ.len()
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): run it as root");
    }
    let options = LabOptions {
        paths: args.paths,
        respect_injection: args.respect_injection,
        binary: std::env::current_exe().context("cannot find the palisade binary")?,
        hold: args.hold,
        log_allowed: args.log_allowed,
        dns_grace: args.dns_grace,
    };
    eprintln!("palisade lab: building");
    let lab = Lab::start(options)?;
    for e in &lab.report().errors {
        eprintln!("{e}");
    }
    eprintln!(
        "palisade lab: {} pods ({} with a proxy); probing",
        lab.cluster().pods.len(),
        lab.injected().len()
    );
    let observed = lab.probe_all()?;
    let differ = match args.output {
        Output::Table => print_table(&lab, &observed),
        Output::Json => {
            // `allowed` is what was observed; SCTP flows are not probed and left out.
            let flows = observed
                .iter()
                .filter_map(|o| {
                    o.observed.map(|seen| palisade_policy::simulate::SimFlow {
                        allowed: seen,
                        ..o.expected.clone()
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&Simulation { flows })?);
            observed.iter().filter(|o| o.differs()).count()
        }
    };
    if args.keep {
        eprintln!("\npalisade lab: up until Ctrl-C. Enter a pod with:");
        for pod in &lab.cluster().pods {
            if let Ok(ns) = lab.netns(&pod.key()) {
                eprintln!("  {:30} ip netns exec {} bash", pod.key(), ns.name());
            }
        }
        eprintln!("  logs and manifests: {}", lab.workdir().display());
        eprintln!(
            "  flows the proxies report: palisade flows --lab {0} [--follow]\n  \
             audit to enforce: palisade rollout status|enforce|audit NAMESPACE --lab {0}",
            lab.workdir().display()
        );
        while !interrupted() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(lab);
    Ok(if differ > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
