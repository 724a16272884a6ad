//! What the sources (a folder of manifests, the Kubernetes API) tell the compile loop, and
//! the loop itself: it applies every change to one [`Compiler`] and publishes each batch to
//! the [`Store`], on a thread of its own so that compiling never holds up the streams.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::compile::Compiler;
use palisade_policy::manifest::{Object, ObjectKey, Report};
use tokio::sync::mpsc;

use crate::folder::FolderSource;
use crate::metrics;
use crate::store::Store;

/// How many events may wait for the compile loop before sources wait for it.
const QUEUE: usize = 8192;

/// A change a source saw.
#[derive(Debug)]
pub enum Event {
    /// An object is new or changed.
    Apply(Object),
    /// An object is gone.
    Remove(ObjectKey),
    /// The source has read everything once: policies may be served.
    Synced,
}

/// Where sources send their events.
pub type Events = mpsc::Sender<Event>;

/// Starts the compile loop on a thread of its own; it ends when every sender is dropped.
pub fn start(store: Arc<Store>) -> std::io::Result<Events> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("palisade-compile".into())
        .spawn(move || compile_loop(rx, &store))?;
    Ok(tx)
}

fn compile_loop(mut rx: mpsc::Receiver<Event>, store: &Store) {
    let mut compiler = Compiler::default();
    while let Some(first) = rx.blocking_recv() {
        let received = Instant::now();
        let mut synced = false;
        let mut events = 0usize;
        let mut take = |event: Event, compiler: &mut Compiler| {
            events += 1;
            match event {
                Event::Apply(o) => compiler.apply(o),
                Event::Remove(k) => compiler.remove(&k),
                Event::Synced => synced = true,
            }
        };
        take(first, &mut compiler);
        // Everything already queued goes into the same batch.
        while let Ok(event) = rx.try_recv() {
            take(event, &mut compiler);
        }
        let start = Instant::now();
        let changes = compiler.take_changes();
        let published = store.publish(&compiler, &changes, received);
        let took = start.elapsed();
        ::metrics::histogram!(metrics::COMPILE_SECONDS).record(took.as_secs_f64());
        ::metrics::gauge!(metrics::PODS).set(store.pods() as f64);
        ::metrics::counter!(metrics::CHANGES).increment(published.policies as u64);
        tracing::debug!(
            events,
            policies = published.policies,
            woken = published.woken,
            sets = changes.sets.len(),
            services = changes.services.len(),
            ?took,
            "batch compiled"
        );
        if synced {
            store.set_ready();
            tracing::info!(pods = store.pods(), "every pod compiled; serving policies");
        }
    }
}

fn log_report(report: &Report) {
    for e in &report.errors {
        tracing::warn!("{e}");
    }
    for n in &report.notices {
        tracing::info!("{n}");
    }
}

/// Reads the folder whenever it changes and sends what changed, forever.
pub async fn watch_folder(paths: Vec<PathBuf>, poll: Duration, events: Events) {
    let mut source = Some(FolderSource::new(paths.clone()));
    let mut known: BTreeMap<ObjectKey, Object> = BTreeMap::new();
    let mut synced = false;
    loop {
        let mut s = source
            .take()
            .unwrap_or_else(|| FolderSource::new(paths.clone()));
        // Reading files is blocking work: keep it off the threads that serve the streams.
        let read = tokio::task::spawn_blocking(move || {
            let result = s.changed().then(|| s.read());
            (s, result)
        })
        .await;
        match read {
            Ok((s, result)) => {
                source = Some(s);
                if let Some((cluster, report)) = result {
                    log_report(&report);
                    let result = if report.has_errors() { "invalid" } else { "ok" };
                    ::metrics::counter!(metrics::RELOADS, "result" => result).increment(1);
                    ::metrics::gauge!(metrics::INVALID).set(report.errors.len() as f64);
                    let now = cluster.objects();
                    let mut batch = Vec::new();
                    for key in known.keys().filter(|k| !now.contains_key(*k)) {
                        batch.push(Event::Remove(key.clone()));
                    }
                    for (key, object) in &now {
                        if known.get(key) != Some(object) {
                            batch.push(Event::Apply(object.clone()));
                        }
                    }
                    tracing::info!(
                        pods = cluster.pods.len(),
                        changed = batch.len(),
                        "manifests read"
                    );
                    known = now;
                    if !synced {
                        batch.push(Event::Synced);
                        synced = true;
                    }
                    for event in batch {
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the source failed; keeping the policies in force");
            }
        }
        tokio::time::sleep(poll).await;
    }
}
