//! `palisade controller`: compiles every pod's policy and streams it to the pod's proxy, from
//! the Kubernetes API (the default) or from manifest files (`--source`); serves the
//! admission webhooks when asked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use palisade_controller::heartbeat::Replica;
use palisade_controller::inject::{InjectOptions, SidecarKind};
use palisade_controller::tls::CertFiles;
use palisade_controller::webhook::Webhook;
use palisade_controller::{Config, Source};

/// Arguments of `palisade controller`.
#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or folders to read, and read again when they change, instead of the
    /// Kubernetes API.
    #[arg(long, env = "PALISADE_SOURCE", value_delimiter = ',')]
    source: Vec<PathBuf>,
    /// Where proxies connect for their policy streams (HTTP/2 over TLS); the default takes
    /// every address of both families, so that IPv6-only and dual-stack clusters reach it.
    #[arg(long, env = "PALISADE_LISTEN", default_value = "[::]:7443")]
    listen: SocketAddr,
    /// The policy stream's certificate chain (PEM); read again when it changes.
    #[arg(
        long,
        env = "PALISADE_TLS_CERT",
        default_value = "/etc/palisade/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// The certificate's key (PEM).
    #[arg(
        long,
        env = "PALISADE_TLS_KEY",
        default_value = "/etc/palisade/tls/tls.key"
    )]
    tls_key: PathBuf,
    /// With --source: a file of `token,namespace/pod` lines saying which token is which
    /// pod's (with the Kubernetes API, tokens are checked by TokenReview instead).
    #[arg(long, env = "PALISADE_TOKENS")]
    tokens: Option<PathBuf>,
    /// How long a policy stream lasts before its proxy reconnects and presents its token
    /// again (a tenth more or less, so that proxies spread over the replicas again).
    #[arg(long, env = "PALISADE_MAX_STREAM_AGE", default_value = "30m", value_parser = humantime::parse_duration)]
    max_stream_age: Duration,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "PALISADE_METRICS", default_value = "[::]:9090")]
    metrics: SocketAddr,
    /// Where the recent flows proxies report are served (NDJSON, `/v1/flows`): loopback,
    /// so that only `kubectl port-forward` (RBAC `pods/portforward` on the controller's
    /// pods) and `palisade flows` through it reach them.
    #[arg(long, env = "PALISADE_FLOWS_LISTEN", default_value = "127.0.0.1:9091")]
    flows_listen: SocketAddr,
    /// How many flow records the window keeps, at most (the oldest go first).
    #[arg(long, env = "PALISADE_FLOW_WINDOW_RECORDS", default_value_t = palisade_controller::flows::DEFAULT_RECORDS)]
    flow_window_records: usize,
    /// How long the window keeps a flow record.
    #[arg(long, env = "PALISADE_FLOW_WINDOW_AGE", default_value = "1h", value_parser = humantime::parse_duration)]
    flow_window_age: Duration,
    /// How often the source folder is checked for changes.
    #[arg(long, env = "PALISADE_POLL", default_value = "250ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Worker threads.
    #[arg(long, env = "PALISADE_THREADS", default_value_t = 2)]
    threads: usize,
    /// Serve the admission webhooks (pod injection, policy validation) here, over TLS.
    #[arg(long, env = "PALISADE_WEBHOOK_LISTEN", requires_all = ["webhook_cert", "webhook_key", "image"])]
    webhook_listen: Option<SocketAddr>,
    /// The webhooks' certificate chain (PEM), read again when it changes.
    #[arg(long, env = "PALISADE_WEBHOOK_CERT")]
    webhook_cert: Option<PathBuf>,
    /// The webhooks' private key (PEM).
    #[arg(long, env = "PALISADE_WEBHOOK_KEY")]
    webhook_key: Option<PathBuf>,
    /// The image injected pods run palisade init and proxy from.
    #[arg(long, env = "PALISADE_IMAGE")]
    image: Option<String>,
    /// Its pull policy (the cluster's default if not given).
    #[arg(long, env = "PALISADE_IMAGE_PULL_POLICY")]
    image_pull_policy: Option<String>,
    /// The CA (PEM file) injected proxies trust for the policy stream; it goes into their
    /// environment.
    #[arg(
        long,
        env = "PALISADE_STREAM_CA",
        default_value = "/etc/palisade/tls/ca.crt"
    )]
    stream_ca: PathBuf,
    /// The policy stream as injected proxies reach it.
    #[arg(
        long,
        env = "PALISADE_STREAM_URL",
        default_value = "https://palisade.palisade-system.svc:7443"
    )]
    stream_url: String,
    /// The fail mode of injected proxies whose pod has no palisade.dev/fail-mode.
    #[arg(long, env = "PALISADE_FAIL_MODE", value_enum, default_value_t = FailMode::Closed)]
    fail_mode: FailMode,
    /// The port of injected proxies' metrics listener (/metrics only, on the pod's
    /// addresses, left out of redirection, announced with prometheus.io annotations); 0:
    /// none (a pod's palisade.dev/metrics annotation decides for itself).
    #[arg(long, env = "PALISADE_PROXY_METRICS_PORT", default_value_t = palisade_controller::inject::containers::METRICS_PORT)]
    proxy_metrics_port: u16,
    /// Inject the proxy as a native sidecar (an init container that keeps running,
    /// Kubernetes 1.29+), or as a first regular container; `auto` asks the API server's
    /// version.
    #[arg(long, env = "PALISADE_NATIVE_SIDECARS", value_enum, default_value_t = NativeSidecars::Auto)]
    native_sidecars: NativeSidecars,
    /// This replica's pod, namespace and pod UID (downward API): with them it renews a
    /// Lease saying how many proxies it serves, which `palisade status` reads.
    #[arg(long, env = "PALISADE_REPLICA_POD", requires = "replica_namespace")]
    replica_pod: Option<String>,
    /// The controller's namespace.
    #[arg(long, env = "PALISADE_REPLICA_NAMESPACE")]
    replica_namespace: Option<String>,
    /// The replica pod's UID, which owns its Lease.
    #[arg(long, env = "PALISADE_REPLICA_POD_UID")]
    replica_pod_uid: Option<String>,
}

/// `--fail-mode`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum FailMode {
    /// New flows are refused.
    Closed,
    /// New flows pass.
    Open,
}

/// `--native-sidecars`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NativeSidecars {
    /// When the API server is 1.29 or later (native sidecars on by default).
    Auto,
    /// Always (1.28 with the SidecarContainers feature gate on, or later).
    Always,
    /// Never: a first regular container the app waits for.
    Never,
}

/// The first Kubernetes minor version with native sidecars on by default.
const NATIVE_SIDECARS_SINCE: (u32, u32) = (1, 29);

/// Whether the API server runs native sidecars, from its version (`/version`).
async fn native_sidecars(client: &kube::Client) -> anyhow::Result<bool> {
    let info = client
        .apiserver_version()
        .await
        .context("asking the API server's version (or pass --native-sidecars)")?;
    // Minor versions look like "29" or "29+" (some managed clusters).
    let number = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
    let version = number(&info.major)
        .zip(number(&info.minor))
        .with_context(|| {
            format!(
                "cannot read the API server's version {:?}",
                info.git_version
            )
        })?;
    Ok(version >= NATIVE_SIDECARS_SINCE)
}

async fn webhook(
    args: &Args,
    client: Option<&kube::Client>,
) -> anyhow::Result<Option<palisade_controller::WebhookConfig>> {
    let (Some(listen), Some(cert), Some(key), Some(image)) = (
        args.webhook_listen,
        &args.webhook_cert,
        &args.webhook_key,
        &args.image,
    ) else {
        return Ok(None);
    };
    let client = client.cloned();
    let native = match args.native_sidecars {
        NativeSidecars::Always => true,
        NativeSidecars::Never => false,
        NativeSidecars::Auto => {
            native_sidecars(client.as_ref().context("--native-sidecars auto")?).await?
        }
    };
    let sidecar = if native {
        SidecarKind::Native
    } else {
        SidecarKind::Container
    };
    let mut inject = InjectOptions::new(image.clone(), args.stream_url.clone(), sidecar);
    inject.pull_policy = args.image_pull_policy.clone();
    inject.metrics_port = (args.proxy_metrics_port != 0).then_some(args.proxy_metrics_port);
    inject.ca = Some(std::fs::read_to_string(&args.stream_ca).with_context(|| {
        format!(
            "reading the CA injected proxies trust, {}",
            args.stream_ca.display()
        )
    })?);
    inject.fail_mode = match args.fail_mode {
        FailMode::Closed => palisade_controller::inject::FailMode::Closed,
        FailMode::Open => palisade_controller::inject::FailMode::Open,
    };
    Ok(Some(palisade_controller::WebhookConfig {
        listen,
        tls: CertFiles::new(cert.clone(), key.clone())?,
        webhook: Webhook { inject, client },
    }))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init();
    let runtime = crate::logging::runtime(args.threads)?;
    runtime.block_on(async {
        let heartbeat = match (&args.replica_pod, &args.replica_namespace) {
            (Some(pod), Some(namespace)) => Some(Replica {
                namespace: namespace.clone(),
                pod: pod.clone(),
                pod_uid: args.replica_pod_uid.clone(),
            }),
            _ => None,
        };
        // One client for the source, the TokenReviews, the webhooks and the heartbeat.
        let needs_client = args.source.is_empty()
            || heartbeat.is_some()
            || (args.webhook_listen.is_some() && args.native_sidecars == NativeSidecars::Auto);
        let client = match needs_client {
            true => Some(palisade_controller::kubernetes::client().await?),
            // The webhooks use a client when there is one.
            false => palisade_controller::kubernetes::client().await.ok(),
        };
        let webhook = webhook(&args, client.as_ref()).await?;
        let source = if args.source.is_empty() {
            Source::Kubernetes
        } else {
            Source::Folder {
                paths: args.source,
                poll: args.poll,
            }
        };
        let config = Config {
            source,
            listen: args.listen,
            metrics: Some(args.metrics),
            flows: Some(args.flows_listen),
            flow_window: palisade_controller::flows::Limits {
                records: args.flow_window_records,
                age: args.flow_window_age,
            },
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            tokens: args.tokens,
            max_stream_age: args.max_stream_age,
            webhook,
            heartbeat,
        };
        palisade_controller::run_with(config, client)
            .await
            .context("the controller stopped")
    })?;
    Ok(ExitCode::SUCCESS)
}
