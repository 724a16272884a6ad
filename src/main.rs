//! `palisade`: one binary for every part of palisade. This file only parses arguments and
//! hands each subcommand to its module.

mod check;
mod controller;
mod diff;
mod explain;
mod flows;
mod generate;
mod init;
mod install;
mod lint;
mod load;
mod logging;
mod probe;
mod proxy;
mod rollout;
mod simulate;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kubernetes NetworkPolicy, HTTP rules and FQDN egress allowlists, enforced inside each pod.
#[derive(Parser)]
#[command(name = "palisade", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Judge every pod-to-pod flow of a set of manifests and print who can reach whom.
    Simulate(simulate::Args),
    /// Explain the verdict on one flow: which policies select each side, which rule matched.
    Check(check::Args),
    /// Find the usual NetworkPolicy mistakes in a set of manifests (text, JSON or SARIF).
    Lint(lint::Args),
    /// The flows a change to the manifests opens and closes (OLD and NEW: paths or REV:PATH).
    Diff(diff::Args),
    /// Everything that applies to one pod: its policies, what it may reach and what may
    /// reach it, in words, and its flows.
    Explain(explain::Args),
    /// Propose least-privilege NetworkPolicies for a namespace from observed flows.
    Generate(generate::Args),
    /// The flows proxies reported to the controllers, like `hubble observe`.
    Flows(flows::Args),
    /// Move a namespace from audit to enforce: what would be denied, and the mode switch.
    #[command(subcommand)]
    Rollout(rollout::Command),
    /// Install the iptables rules that send a pod's traffic through its proxy (init container).
    Init(init::Args),
    /// Run the sidecar proxy that enforces one pod's policy.
    Proxy(proxy::Args),
    /// Compile every pod's policy and stream it to the pod's proxy.
    Controller(controller::Args),
    /// Print every object a cluster needs to run palisade (`| kubectl apply -f -`).
    Install(install::Args),
    /// Show what palisade enforces on a cluster: injection, modes, proxies, replicas.
    Status(status::Args),
    /// Ask the proxy's admin server for /live or /ready (the sidecar's exec probes).
    Probe(probe::Args),
    /// Build a real mini-cluster in network namespaces and probe every flow (root).
    Lab(palisade::lab::cli::Args),
}

/// Exit code for bad input (invalid manifests, unknown pods, bad arguments).
pub const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(args) => simulate::run(args),
        Command::Check(args) => check::run(args),
        Command::Lint(args) => lint::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Flows(args) => flows::run(args),
        Command::Rollout(command) => rollout::run(command),
        Command::Init(args) => init::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Controller(args) => controller::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Install(args) => install::run(args),
        Command::Status(args) => status::run(args),
        Command::Lab(args) => palisade::lab::cli::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}
