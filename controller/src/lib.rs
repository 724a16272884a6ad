//! palisade-controller: reads the cluster's state (from the Kubernetes API, or a folder of
//! manifests), keeps each pod's policy compiled, and streams it to that pod's proxy over
//! TLS, to that proxy only: a change reaches only the proxies whose policy it changed.
//!
//! It must never judge a flow (the proxies do, with the policy crate), never let a bad
//! object change what is enforced (a rejected object keeps its last valid version), and
//! never serve a policy to a proxy that cannot prove it runs in that pod.

pub mod auth;
pub mod flows;
pub mod folder;
pub mod heartbeat;
pub mod inject;
pub mod kubernetes;
pub mod metrics;
pub mod server;
pub mod source;
pub mod store;
pub mod tls;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use auth::{Authenticator, PodUids, StaticTokens, TokenReviewer};
use store::Store;

/// Where the cluster's objects come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Manifest files and folders, read again when they change.
    Folder {
        /// The files and folders.
        paths: Vec<PathBuf>,
        /// How often they are checked for changes.
        poll: Duration,
    },
    /// The Kubernetes API, as the kubeconfig or the pod's ServiceAccount gives access.
    Kubernetes,
}

/// The controller's configuration.
pub struct Config {
    /// Where objects come from.
    pub source: Source,
    /// Where proxies connect for their policy streams.
    pub listen: SocketAddr,
    /// Where the window of recent flows is served (NDJSON), if anywhere: meant for
    /// loopback, reached through `kubectl port-forward`.
    pub flows: Option<SocketAddr>,
    /// The bounds of that window.
    pub flow_window: flows::Limits,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The stream's certificate chain (PEM), read again when it changes.
    pub tls_cert: PathBuf,
    /// Its key (PEM).
    pub tls_key: PathBuf,
    /// A static token file (`token,namespace/pod` lines) for sources without an API server;
    /// with the Kubernetes source, tokens are checked by TokenReview and this must be unset.
    pub tokens: Option<PathBuf>,
    /// How long a stream lasts before its proxy reconnects (presenting its token again).
    pub max_stream_age: Duration,
    /// The admission webhooks, if this replica serves them.
    pub webhook: Option<WebhookConfig>,
    /// Who this replica is, for its heartbeat Lease (needs the Kubernetes client).
    pub heartbeat: Option<heartbeat::Replica>,
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
pub enum Error {
    /// An address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The token file cannot be used.
    #[error("token file {0}")]
    Tokens(#[from] auth::TokenFileError),
    /// No Kubernetes client could be made.
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::ClientError),
    /// Options that do not go together.
    #[error("{0}")]
    Options(&'static str),
    /// The compile thread could not start.
    #[error("cannot start the compile thread: {0}")]
    Thread(#[source] std::io::Error),
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })
}

/// Runs the controller until the process ends, with a Kubernetes client made as
/// [`kubernetes::client`] makes it when the source is the API.
pub async fn run(config: Config) -> Result<(), Error> {
    let client = match config.source {
        Source::Kubernetes => Some(kubernetes::client().await?),
        Source::Folder { .. } => None,
    };
    run_with(config, client).await
}

/// Runs the controller until the process ends, with this client for the Kubernetes source
/// and its TokenReviews (other servers of the process share the same client).
pub async fn run_with(config: Config, client: Option<kube::Client>) -> Result<(), Error> {
    if matches!(config.source, Source::Kubernetes) && client.is_none() {
        return Err(Error::Options(
            "the Kubernetes source needs a Kubernetes client",
        ));
    }
    let handle = metrics::install();
    let store = Arc::new(Store::default());
    let mut tls =
        tls::CertFiles::new(config.tls_cert.clone(), config.tls_key.clone())?.server_config();
    // The policy stream is HTTP/2 only.
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = Arc::new(tls);
    let events = source::start(store.clone()).map_err(Error::Thread)?;
    let (auth, uids) = match (&config.source, &client, &config.tokens) {
        (Source::Kubernetes, Some(client), None) => (
            Authenticator::Review(Box::new(TokenReviewer::new(client.clone()))),
            Some(Arc::new(PodUids::default())),
        ),
        (Source::Kubernetes, _, Some(_)) => {
            return Err(Error::Options(
                "--tokens is for sources without an API server: with the Kubernetes source, tokens are checked by TokenReview",
            ))
        }
        (Source::Folder { .. }, _, Some(file)) => {
            (Authenticator::Static(StaticTokens::open(file)?), None)
        }
        (Source::Folder { .. }, _, None) => {
            return Err(Error::Options(
                "the folder source needs --tokens FILE (token,namespace/pod lines) to know which proxy is which",
            ))
        }
        // Checked at the start: the Kubernetes source has a client.
        (Source::Kubernetes, None, None) => return Err(Error::Options("no Kubernetes client")),
    };
    let listener = bind(config.listen).await?;
    let window = Arc::new(flows::Window::new(config.flow_window));
    let streams = Arc::new(server::Streams {
        store: store.clone(),
        auth,
        uids: uids.clone(),
        max_age: config.max_stream_age,
        flows: window.clone(),
    });
    if let Some(addr) = config.flows {
        let listener = bind(addr).await?;
        tracing::info!(listen = %addr, "recent flows served");
        tokio::spawn(flows::serve(listener, window));
    }
    tokio::spawn(server::serve(listener, tls, streams));
    if let (Some(addr), Some(handle)) = (config.metrics, handle) {
        let listener = bind(addr).await?;
        tokio::spawn(metrics::serve(listener, handle, store.clone()));
    }
    if let Some(w) = config.webhook {
        let listener = bind(w.listen).await?;
        tracing::info!(listen = %w.listen, "admission webhooks served");
        tokio::spawn(webhook::serve(
            listener,
            w.tls.server_config(),
            Arc::new(w.webhook),
        ));
    }
    if let (Some(replica), Some(client)) = (config.heartbeat, &client) {
        let store = store.clone();
        tokio::spawn(heartbeat::run(client.clone(), replica, move || {
            (server::open_streams(), store.pods())
        }));
    }
    tracing::info!(listen = %config.listen, source = ?config.source, "controller started");
    match (config.source, client, uids) {
        (Source::Folder { paths, poll }, _, _) => source::watch_folder(paths, poll, events).await,
        (Source::Kubernetes, Some(client), Some(uids)) => {
            kubernetes::watch(client, events, uids).await
        }
        // Checked at the start: the Kubernetes source has a client, hence UIDs.
        (Source::Kubernetes, _, _) => {}
    }
    Ok(())
}
