//! `palisade probe PATH`: asks the proxy's admin server (localhost only) for `/live` or
//! `/ready` and exits 0 on 200. Kubelet probes reach the pod's address, not its loopback,
//! so the injected proxy's probes are exec probes running this inside the pod; with
//! `--wait` it is the `postStart` hook that holds the app back until the proxy listens.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Arguments of `palisade probe`.
#[derive(clap::Args)]
pub struct Args {
    /// The admin path to ask, e.g. /live or /ready.
    path: String,
    /// The proxy's admin server.
    #[arg(long, env = "PALISADE_ADMIN", default_value = "127.0.0.1:7490")]
    admin: SocketAddr,
    /// Ask again until the answer is 200, for at most this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
}

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How often `--wait` asks.
const INTERVAL: Duration = Duration::from_millis(200);

async fn ask(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot connect to the proxy's admin server at {admin}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).trim().to_owned()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + args.wait.unwrap_or_default();
    loop {
        let answer = runtime
            .block_on(async { tokio::time::timeout(TIMEOUT, ask(args.admin, &args.path)).await });
        let (ok, said) = match answer {
            Ok(Ok((200, body))) => (true, body),
            Ok(Ok((status, body))) => (false, format!("{status}: {body}")),
            Ok(Err(e)) => (false, format!("{e:#}")),
            Err(_) => (false, format!("no answer within {TIMEOUT:?}")),
        };
        if ok {
            println!("{said}");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            eprintln!("palisade probe {}: {said}", args.path);
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(INTERVAL);
    }
}
