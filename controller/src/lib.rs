//! palisade-controller: reads the cluster's state, compiles each pod's policy, and streams
//! it to that pod's proxy, a new version on every change.
//!
//! It must never judge a flow (the proxies do, with the policy crate), and never let a bad
//! object change what is enforced: a rejected object keeps its last valid version.

pub mod folder;
pub mod heartbeat;
pub mod inject;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::manifest::Report;
use store::Store;

/// The controller's configuration.
pub struct Config {
    /// Manifest files and folders to read (the folder source).
    pub source: Vec<PathBuf>,
    /// Where proxies connect for their policy streams.
    pub listen: SocketAddr,
    /// Where `/metrics` and `/healthz` are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// How often the folder is checked for changes.
    pub poll: Duration,
    /// The admission webhooks, if this replica serves them.
    pub webhook: Option<WebhookConfig>,
    /// The API client and who this replica is, for its heartbeat Lease.
    pub heartbeat: Option<(kube::Client, heartbeat::Replica)>,
}

/// Where and how the admission webhooks are served.
pub struct WebhookConfig {
    /// Their address (8443).
    pub listen: SocketAddr,
    /// Their TLS certificate and key, read again when the files change.
    pub tls: tls::CertFiles,
    /// What they need to decide.
    pub webhook: webhook::Webhook,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

fn log_report(report: &Report) {
    for e in &report.errors {
        tracing::warn!("{e}");
    }
    for n in &report.notices {
        tracing::info!("{n}");
    }
}

/// Runs the controller until the process ends.
pub async fn run(config: Config) -> Result<(), ListenError> {
    let handle = metrics::install();
    let store = Arc::new(Store::default());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ListenError {
            addr: config.listen,
            source,
        })?;
    tokio::spawn(server::serve(listener, store.clone()));
    if let (Some(addr), Some(handle)) = (config.metrics, handle) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError { addr, source })?;
        tokio::spawn(metrics::serve(listener, handle));
    }
    if let Some(w) = config.webhook {
        let listener = tokio::net::TcpListener::bind(w.listen)
            .await
            .map_err(|source| ListenError {
                addr: w.listen,
                source,
            })?;
        tracing::info!(listen = %w.listen, "admission webhooks served");
        tokio::spawn(webhook::serve(
            listener,
            w.tls.server_config(),
            Arc::new(w.webhook),
        ));
    }
    if let Some((client, replica)) = config.heartbeat {
        let store = store.clone();
        tokio::spawn(heartbeat::run(client, replica, move || {
            (server::open_streams(), store.pods())
        }));
    }
    tracing::info!(listen = %config.listen, source = ?config.source, "controller started");

    let mut source = folder::FolderSource::new(config.source.clone());
    loop {
        let reload = {
            let store = store.clone();
            // Reading files and compiling every pod is blocking work: keep it off the
            // threads that serve the streams.
            tokio::task::spawn_blocking(move || {
                if !source.changed() {
                    return (source, None);
                }
                let (cluster, report) = source.read();
                let start = Instant::now();
                let changed = store.update(&cluster);
                ::metrics::histogram!(metrics::COMPILE_SECONDS)
                    .record(start.elapsed().as_secs_f64());
                (source, Some((report, cluster.pods.len(), changed)))
            })
        };
        match reload.await {
            Ok((s, result)) => {
                source = s;
                if let Some((report, pods, changed)) = result {
                    log_report(&report);
                    let result = if report.has_errors() { "invalid" } else { "ok" };
                    ::metrics::counter!(metrics::RELOADS, "result" => result).increment(1);
                    ::metrics::gauge!(metrics::INVALID).set(report.errors.len() as f64);
                    ::metrics::gauge!(metrics::PODS).set(store.pods() as f64);
                    ::metrics::counter!(metrics::CHANGES).increment(changed as u64);
                    tracing::info!(pods, changed, "policies compiled");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the source failed; keeping the policies in force");
                source = folder::FolderSource::new(config.source.clone());
            }
        }
        tokio::time::sleep(config.poll).await;
    }
}
