//! `palisade controller`: compiles every pod's policy and streams it to the pod's proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use palisade_controller::Config;

/// Arguments of `palisade controller`.
#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or folders to read, and read again when they change.
    #[arg(long, env = "PALISADE_SOURCE", required = true, value_delimiter = ',')]
    source: Vec<PathBuf>,
    /// Where proxies connect for their policy streams (HTTP/2); the default takes every
    /// address of both families, so that IPv6-only and dual-stack clusters reach it.
    #[arg(long, env = "PALISADE_LISTEN", default_value = "[::]:7443")]
    listen: SocketAddr,
    /// Where /metrics and /healthz are served.
    #[arg(long, env = "PALISADE_METRICS", default_value = "0.0.0.0:9090")]
    metrics: SocketAddr,
    /// How often the source folder is checked for changes.
    #[arg(long, env = "PALISADE_POLL", default_value = "250ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Worker threads.
    #[arg(long, env = "PALISADE_THREADS", default_value_t = 2)]
    threads: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init();
    let config = Config {
        source: args.source,
        listen: args.listen,
        metrics: Some(args.metrics),
        poll: args.poll,
    };
    crate::logging::runtime(args.threads)?
        .block_on(palisade_controller::run(config))
        .context("the controller stopped")?;
    Ok(ExitCode::SUCCESS)
}
