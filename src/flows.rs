//! `palisade flows`: the flows proxies reported to the controllers, like `hubble observe`:
//! filters, `--follow`, `-o json`, `--summary`. Each controller replica keeps only its own
//! proxies' flows, so every replica is asked and their answers merged. Also where
//! `rollout status` and `generate` read observed flows from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use palisade::lab::LabState;
use palisade_policy::flows::{Filter, FlowRecord, Group, READ_PATH};
use tokio::sync::mpsc;

/// How to reach the controllers' flows.
#[derive(clap::Args, Debug, Clone)]
pub struct Reach {
    /// A controller's flows address (`http://HOST:PORT`, its --flows-listen), e.g. after
    /// `kubectl -n palisade port-forward pod/REPLICA 9091`; repeat for every replica.
    #[arg(long = "controller", value_name = "URL")]
    controllers: Vec<String>,
    /// A lab kept up with `palisade lab --keep`: its work folder (printed by the lab).
    #[arg(long, value_name = "DIR", conflicts_with = "controllers")]
    lab: Option<PathBuf>,
    /// Without --controller or --lab: the namespace of the controller replicas (found by
    /// their Leases), each reached by a port-forward through the Kubernetes API.
    #[arg(long, default_value = "palisade-system")]
    controller_namespace: String,
    /// The replicas' flows port (their --flows-listen).
    #[arg(long, default_value_t = 9091)]
    flows_port: u16,
}

/// One place flows are read from.
#[derive(Clone)]
enum Target {
    Url(String),
    Lab {
        netns: PathBuf,
        addr: SocketAddr,
    },
    /// A replica's pod, through a port-forward.
    Replica {
        client: kube::Client,
        namespace: String,
        pod: String,
        port: u16,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(u) => write!(f, "http://{u}"),
            Self::Lab { addr, .. } => write!(f, "the lab's controller at {addr}"),
            Self::Replica {
                namespace,
                pod,
                port,
                ..
            } => write!(f, "replica {namespace}/{pod}:{port}"),
        }
    }
}

impl Reach {
    /// The lab this reach names, if any.
    pub fn lab(&self) -> anyhow::Result<Option<LabState>> {
        self.lab.as_deref().map(LabState::read).transpose()
    }

    async fn targets(&self) -> anyhow::Result<Vec<Target>> {
        if let Some(lab) = self.lab()? {
            return Ok(vec![Target::Lab {
                netns: lab.netns,
                addr: lab.flows,
            }]);
        }
        if self.controllers.is_empty() {
            return self.replicas().await;
        }
        self.controllers
            .iter()
            .map(|c| {
                let hostport = c.strip_prefix("http://").unwrap_or(c).trim_end_matches('/');
                if hostport.contains('/') || hostport.is_empty() {
                    bail!("--controller {c:?}: expected http://HOST:PORT");
                }
                Ok(Target::Url(hostport.to_owned()))
            })
            .collect()
    }
}

impl Reach {
    /// Every live replica (by its Lease), reached through the API.
    async fn replicas(&self) -> anyhow::Result<Vec<Target>> {
        let client = kube::Client::try_default().await.context(
            "no Kubernetes API configuration (kubeconfig or in-cluster): give --controller or --lab",
        )?;
        let leases =
            crate::status::replica_leases(client.clone(), &self.controller_namespace).await?;
        let now = k8s_openapi::jiff::Timestamp::now();
        let pods: Vec<String> = leases
            .items
            .iter()
            .map(|l| crate::status::replica_status(l, now))
            .filter(|r| r.alive && !r.pod.is_empty())
            .map(|r| r.pod)
            .collect();
        if pods.is_empty() {
            bail!(
                "no live controller replica in namespace {} (no renewed Lease): is the controller running there? (--controller-namespace)",
                self.controller_namespace
            );
        }
        Ok(pods
            .into_iter()
            .map(|pod| Target::Replica {
                client: client.clone(),
                namespace: self.controller_namespace.clone(),
                pod,
                port: self.flows_port,
            })
            .collect())
    }
}

/// What to ask every controller.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// The records wanted.
    pub filter: Filter,
    /// Only records received this long ago at most.
    pub since: Option<Duration>,
    /// Keep streaming new records.
    pub follow: bool,
}

impl Ask {
    fn path(&self) -> String {
        let mut q = self.filter.query();
        let mut add = |s: String| {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(&s);
        };
        if let Some(s) = self.since {
            add(format!("since={}ms", s.as_millis()));
        }
        if self.follow {
            add("follow=true".into());
        }
        format!("{READ_PATH}?{q}")
    }
}

/// Connects to `addr` from inside the network namespace `netns` (a thread enters it, opens
/// the socket, and leaves with the thread).
fn connect_in(netns: &Path, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid descriptor changes only this thread, which ends here.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A connection to a controller's flows, and what must live as long as it does.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn connect(
    target: &Target,
) -> anyhow::Result<(Box<dyn Io>, Option<kube::api::Portforwarder>)> {
    let tcp = match target {
        Target::Url(hostport) => tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(hostport.as_str()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {hostport} timed out"))?
        .with_context(|| format!("cannot connect to the controller at {hostport}"))?,
        Target::Lab { netns, addr } => {
            let (netns, addr) = (netns.clone(), *addr);
            let std = tokio::task::spawn_blocking(move || connect_in(&netns, addr))
                .await?
                .with_context(|| format!("cannot reach the lab's controller at {addr}"))?;
            std.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(std)?
        }
        Target::Replica {
            client,
            namespace,
            pod,
            port,
        } => {
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(client.clone(), namespace);
            let mut forward = pods
                .portforward(pod, &[*port])
                .await
                .with_context(|| format!("cannot port-forward to {target} through the API (this takes pods/portforward on the controller's pods)"))?;
            let stream = forward
                .take_stream(*port)
                .with_context(|| format!("no stream for port {port} of {target}"))?;
            return Ok((Box::new(stream), Some(forward)));
        }
    };
    Ok((Box::new(tcp), None))
}

/// Streams every line one controller answers into `lines`.
async fn read_one(target: Target, path: String, lines: mpsc::Sender<String>) -> anyhow::Result<()> {
    // The port-forward lives as long as this read.
    let (io, _forward) = connect(&target).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(&path)
        .header(http::header::HOST, "palisade-controller")
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body.collect().await?.to_bytes();
        bail!(
            "{target} answered {status}: {}",
            String::from_utf8_lossy(&text).trim()
        );
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim().to_owned();
            if !line.is_empty() && lines.send(line).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Asks every controller `reach` names; each record (merged, as they come) goes to
/// `each`, which returns false to stop.
pub async fn stream(
    reach: &Reach,
    ask: &Ask,
    mut each: impl FnMut(FlowRecord) -> bool,
) -> anyhow::Result<()> {
    let targets = reach.targets().await?;
    let (tx, mut rx) = mpsc::channel(1024);
    let mut tasks = tokio::task::JoinSet::new();
    for t in targets {
        tasks.spawn(read_one(t, ask.path(), tx.clone()));
    }
    drop(tx);
    while let Some(line) = rx.recv().await {
        let record: FlowRecord = serde_json::from_str(&line).with_context(|| {
            format!("the controller sent a line that is not a flow record: {line}")
        })?;
        if !each(record) {
            return Ok(());
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Every record the controllers keep that `ask` wants (no follow), oldest first.
pub fn collect(reach: &Reach, ask: &Ask) -> anyhow::Result<Vec<FlowRecord>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = Vec::new();
    runtime.block_on(stream(reach, ask, |r| {
        out.push(r);
        true
    }))?;
    // Replicas answer one after the other: order the merge by time.
    out.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(out)
}

/// How to print flows: one line each, or one JSON record a line (NDJSON).
pub use crate::check::Output;

/// Arguments of `palisade flows`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    reach: Reach,
    /// Flows from or to pods of this namespace.
    #[arg(long, short)]
    namespace: Option<String>,
    /// Flows from or to this pod (`namespace/name`, or a name with --namespace).
    #[arg(long)]
    pod: Option<String>,
    /// Flows with this verdict: allow, deny, would-deny, or denied (both refusals).
    #[arg(long, value_parser = palisade_policy::flows::VERDICTS)]
    verdict: Option<String>,
    /// Flows whose record names this policy (`namespace/name` or a name).
    #[arg(long)]
    policy: Option<String>,
    /// Flows to this destination port.
    #[arg(long)]
    port: Option<u16>,
    /// Flows a toFQDNs rule allowed through a DNS name this matchPattern matches (a name,
    /// `*.example.com` or `**.example.com`).
    #[arg(long, value_parser = name_pattern)]
    name: Option<String>,
    /// Only flows received this long ago at most (e.g. 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Keep printing new flows as they come (until Ctrl-C).
    #[arg(long, short)]
    follow: bool,
    /// One line per group of flows (source and destination workload, port, verdict,
    /// policies) with a count, instead of one per flow.
    #[arg(long, conflicts_with = "follow")]
    summary: bool,
    /// Output format: text, or one JSON record a line.
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

fn name_pattern(s: &str) -> Result<String, String> {
    palisade_policy::fqdn::NamePattern::pattern(s)?;
    Ok(s.to_owned())
}

fn end(e: Option<&palisade_policy::flows::Endpoint>, addr: SocketAddr) -> String {
    match e {
        Some(e) => format!("{}/{}", e.namespace, e.pod),
        None => addr.ip().to_string(),
    }
}

/// One flow in words, as `hubble observe` prints it.
pub fn line(r: &FlowRecord) -> String {
    let mut s = format!(
        "{} {} -> {} {}/{} {} ({} of {}, {})",
        r.time,
        end(r.source.as_ref(), r.src),
        end(r.destination.as_ref(), r.dst),
        r.dst.port(),
        r.protocol.as_str(),
        r.action.as_str().to_uppercase(),
        r.direction,
        r.pod,
        r.reason,
    );
    if !r.policies.is_empty() {
        s.push_str(&format!(" policies {}", r.policies.join(",")));
    }
    if let Some(name) = &r.name {
        s.push_str(&format!(" name {name}"));
    }
    if let Some(h) = &r.http {
        s.push_str(&format!(" {} {} -> {}", h.method, h.path, h.status));
    }
    if r.count > 1 {
        s.push_str(&format!(" x{}", r.count));
    }
    s
}

fn group_line(g: &Group) -> String {
    let k = &g.key;
    format!(
        "{:>6}  {} -> {} {}/{} {} ({}){}{}",
        g.count,
        k.source,
        k.destination,
        k.port,
        k.protocol.as_str(),
        k.action.as_str().to_uppercase(),
        k.direction,
        if k.policies.is_empty() {
            String::new()
        } else {
            format!(" policies {}", k.policies)
        },
        if k.name.is_empty() {
            String::new()
        } else {
            format!(" name {}", k.name)
        }
    )
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ask = Ask {
        filter: Filter {
            namespace: args.namespace,
            pod: args.pod,
            verdict: args.verdict,
            policy: args.policy,
            port: args.port,
            name: args.name,
        },
        since: args.since,
        follow: args.follow,
    };
    let print = |r: &FlowRecord| match args.output {
        Output::Text => println!("{}", line(r)),
        // A record we just parsed serialises.
        Output::Json => println!("{}", serde_json::to_string(r).unwrap_or_default()),
    };
    if args.follow {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(stream(&args.reach, &ask, |r| {
            print(&r);
            true
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let records = collect(&args.reach, &ask)?;
    if args.summary {
        for g in palisade_policy::flows::summarize(&records) {
            match args.output {
                Output::Text => println!("{}", group_line(&g)),
                Output::Json => println!("{}", serde_json::to_string(&g)?),
            }
        }
    } else {
        records.iter().for_each(print);
    }
    Ok(ExitCode::SUCCESS)
}
