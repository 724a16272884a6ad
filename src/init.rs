//! `palisade init`: what the init container runs in the pod's network namespace. It
//! installs (or with `--dry-run` prints, `--verify` checks, `--cleanup` removes) the
//! iptables rules and routes that send the pod's traffic through its proxy. Every option
//! can also come from a `PALISADE_*` environment variable: the injector sets those from
//! the pod's annotations.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use palisade_init::apply;
use palisade_init::config::{
    parse_cidrs, parse_dns_servers, parse_node_ips, parse_ports, read_resolv_conf,
};
use palisade_init::iptables::{self, Backend, IptablesMode};
use palisade_init::ipv6::Ipv6Mode;
use palisade_init::{Config, Family};

/// `--ipv6`.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Ipv6 {
    /// When IPv6 is up in the namespace (enabled, and some interface has an address).
    #[default]
    Auto,
    /// Always; if the ip6tables rules cannot be installed, fail.
    On,
    /// Never.
    Off,
}

/// `--iptables-mode`.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Mode {
    /// The variant that already holds rules here; if none does, nft when it works.
    #[default]
    Auto,
    /// iptables-legacy.
    Legacy,
    /// iptables-nft.
    Nft,
}

/// Arguments of `palisade init`.
#[derive(clap::Args)]
pub struct Args {
    /// The proxy's uid: its own traffic is not redirected.
    #[arg(long, env = "PALISADE_PROXY_UID", default_value_t = 2190)]
    proxy_uid: u32,
    /// The proxy's outbound listener (TCP, and UDP via TPROXY).
    #[arg(long, env = "PALISADE_OUTBOUND_PORT", default_value_t = 7401)]
    outbound_port: u16,
    /// The proxy's inbound listener (TCP, and UDP via TPROXY).
    #[arg(long, env = "PALISADE_INBOUND_PORT", default_value_t = 7402)]
    inbound_port: u16,
    /// The proxy's DNS listener.
    #[arg(long, env = "PALISADE_DNS_PORT", default_value_t = 7403)]
    dns_port: u16,
    /// The proxy's metrics port (/metrics only): left out of inbound redirection, so that
    /// Prometheus scrapes it whatever the pod's policy says; 0: none.
    #[arg(long, env = "PALISADE_METRICS_PORT", default_value_t = 7491)]
    metrics_port: u16,
    /// Inbound ports (or ranges like 8000-8100) that reach the app directly, comma-separated.
    #[arg(
        long,
        env = "PALISADE_SKIP_INBOUND_PORTS",
        value_name = "PORTS",
        value_delimiter = ','
    )]
    skip_inbound_ports: Vec<String>,
    /// Outbound ports (or ranges) that leave directly, comma-separated.
    #[arg(
        long,
        env = "PALISADE_SKIP_OUTBOUND_PORTS",
        value_name = "PORTS",
        value_delimiter = ','
    )]
    skip_outbound_ports: Vec<String>,
    /// Outbound destinations (CIDRs or addresses) reached directly, comma-separated.
    #[arg(
        long,
        env = "PALISADE_SKIP_OUTBOUND_CIDRS",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    skip_outbound_cidrs: Vec<String>,
    /// Addresses whose port-53 traffic goes to the DNS listener, comma-separated, or
    /// `none` [default: the nameservers of --resolv-conf].
    #[arg(
        long,
        env = "PALISADE_DNS_SERVERS",
        value_name = "ADDRS",
        value_delimiter = ','
    )]
    dns_servers: Vec<String>,
    /// The pod's node addresses (the downward API's `status.hostIPs`), comma-separated:
    /// every protocol passes to and from them, as NetworkPolicy requires.
    #[arg(
        long,
        env = "PALISADE_NODE_IPS",
        value_name = "ADDRS",
        value_delimiter = ','
    )]
    node_ips: Vec<String>,
    /// Let ICMP echo (ping) in and out of the pod; other protocols than TCP and UDP stay
    /// dropped. Set from the pod annotation `palisade.dev/allow-icmp: "true"`.
    #[arg(long, env = "PALISADE_ALLOW_ICMP")]
    allow_icmp: bool,
    /// Where to read the default DNS servers.
    #[arg(long, env = "PALISADE_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Whether to install the IPv6 (ip6tables) rules as well.
    #[arg(long, env = "PALISADE_IPV6", value_enum, default_value_t)]
    ipv6: Ipv6,
    /// Which iptables variant to use.
    #[arg(long, env = "PALISADE_IPTABLES_MODE", value_enum, default_value_t)]
    iptables_mode: Mode,
    /// Print the iptables-restore input and the ip rule/route commands; change nothing.
    #[arg(long, env = "PALISADE_DRY_RUN", conflicts_with_all = ["verify", "cleanup"])]
    dry_run: bool,
    /// Check that what is installed is what init would install; exit 1 with a diff if not.
    #[arg(long, env = "PALISADE_VERIFY", conflicts_with = "cleanup")]
    verify: bool,
    /// Remove our chains, the jumps into them and our routes, and nothing else.
    #[arg(long, env = "PALISADE_CLEANUP")]
    cleanup: bool,
}

/// Exit code of `--verify` when the installed rules differ.
const EXIT_DRIFT: u8 = 1;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = config(&args)?;
    let mut families = vec![Family::V4];
    let ipv6 = match args.ipv6 {
        Ipv6::Auto => Ipv6Mode::Auto,
        Ipv6::On => Ipv6Mode::On,
        Ipv6::Off => Ipv6Mode::Off,
    };
    if ipv6.enabled() {
        families.push(Family::V6);
    }
    if args.dry_run {
        print!("{}", apply::dry_run(&config, &families));
        return Ok(ExitCode::SUCCESS);
    }
    let mode = match args.iptables_mode {
        Mode::Auto => IptablesMode::Auto,
        Mode::Legacy => IptablesMode::Legacy,
        Mode::Nft => IptablesMode::Nft,
    };
    if args.cleanup {
        // In auto mode, clean wherever our rules may be, not only where detection points.
        let backends = match mode {
            IptablesMode::Auto => Backend::ALL.to_vec(),
            _ => vec![iptables::select(mode)?.backend],
        };
        let removed = apply::remove(&config, &backends, &families).context("--cleanup")?;
        for line in &removed {
            eprintln!("palisade init: removed {line}");
        }
        eprintln!(
            "palisade init: removed the policy routes (table {})",
            config.route_table
        );
        return Ok(ExitCode::SUCCESS);
    }
    let selection = iptables::select(mode)?;
    let backend = selection.backend;
    if args.verify {
        let drift = apply::verify(&config, backend, &families).context("--verify")?;
        if drift.is_empty() {
            eprintln!("palisade init: the installed rules and routes are as intended ({backend})");
            return Ok(ExitCode::SUCCESS);
        }
        print!("{drift}");
        return Ok(ExitCode::from(EXIT_DRIFT));
    }
    eprintln!("palisade init: using {backend} ({})", selection.reason);
    apply::install(&config, backend, &families)?;
    let shown: Vec<String> = families.iter().map(ToString::to_string).collect();
    eprintln!(
        "palisade init: installed the {} rules with {backend}",
        shown.join(" and ")
    );
    Ok(ExitCode::SUCCESS)
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let dns_servers = match parse_dns_servers(&args.dns_servers)? {
        Some(servers) => servers,
        None => read_resolv_conf(&args.resolv_conf)?,
    };
    Ok(Config {
        proxy_uid: args.proxy_uid,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        dns_port: args.dns_port,
        metrics_port: (args.metrics_port != 0).then_some(args.metrics_port),
        skip_inbound_ports: parse_ports("--skip-inbound-ports", &args.skip_inbound_ports)?,
        skip_outbound_ports: parse_ports("--skip-outbound-ports", &args.skip_outbound_ports)?,
        skip_outbound_cidrs: parse_cidrs("--skip-outbound-cidrs", &args.skip_outbound_cidrs)?,
        dns_servers,
        node_ips: parse_node_ips(&args.node_ips)?,
        allow_icmp: args.allow_icmp,
        ..Config::default()
    })
}
