//! Names the proxy resolves itself: the `matchName` names of the pod's egress policy, at
//! start (and whenever a policy names new ones) and again when their TTL runs out, through
//! hickory-resolver against the pod's own `/etc/resolv.conf`. An app that looked a name up
//! before its proxy was up, and kept the address, is then not cut off.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::TokioResolver;
use palisade_policy::compiled::{PeerMatch, PodPolicy};

use crate::judge::Judge;
use crate::metrics;

/// The shortest wait before a name is resolved again (records with a TTL of 0 or 1 would
/// otherwise be asked for without pause; the grace period covers the gap).
const MIN_REFRESH: Duration = Duration::from_secs(5);
/// The longest wait, whatever the TTL.
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// How long to wait after a failed lookup.
const RETRY: Duration = Duration::from_secs(10);

/// The `matchName` names of a policy's egress rules, normalized.
pub fn names(policy: &PodPolicy) -> BTreeSet<String> {
    policy
        .egress
        .rules
        .iter()
        .flat_map(|r| r.peers.iter().flatten())
        .filter_map(|p| match &p.matches {
            PeerMatch::Names(patterns) => Some(patterns.iter()),
            _ => None,
        })
        .flatten()
        .filter_map(|p| p.exact_name().map(str::to_owned))
        .collect()
}

fn resolver() -> Result<TokioResolver, String> {
    let mut builder = TokioResolver::builder_tokio().map_err(|e| e.to_string())?;
    let opts = builder.options_mut();
    // The proxy keeps records itself, with their TTL; a second cache would serve stale ones.
    opts.cache_size = 0;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    builder.build().map_err(|e| e.to_string())
}

/// Resolves the policy's `matchName` names forever, learning the answers into the pod's
/// DNS cache.
pub async fn run(judge: Judge) {
    let resolver = match resolver() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read resolv.conf; matchName names are learned only from the app's own lookups");
            return;
        }
    };
    let mut policies = judge.state().subscribe();
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        let wanted = policies
            .borrow_and_update()
            .as_ref()
            .map(|s| names(&s.policy))
            .unwrap_or_default();
        due.retain(|name, _| wanted.contains(name));
        let now = Instant::now();
        for name in &wanted {
            if due.get(name).is_some_and(|at| *at > now) {
                continue;
            }
            let next = match resolver.lookup_ip(name.as_str()).await {
                Ok(found) => {
                    let now = Instant::now();
                    let valid = found.valid_until().saturating_duration_since(now);
                    let ttl = u32::try_from(valid.as_secs()).unwrap_or(u32::MAX);
                    let ips: Vec<_> = found.iter().map(|ip| (ip, ttl)).collect();
                    judge.dns().learn(name, &ips, now);
                    ::metrics::counter!(metrics::DNS_RESOLUTIONS, "result" => "ok").increment(1);
                    tracing::debug!(%name, addresses = ips.len(), ttl, "resolved a matchName name");
                    now + valid.clamp(MIN_REFRESH, MAX_REFRESH)
                }
                Err(e) => {
                    ::metrics::counter!(metrics::DNS_RESOLUTIONS, "result" => "failed")
                        .increment(1);
                    tracing::debug!(%name, error = %e, "cannot resolve a matchName name");
                    Instant::now() + RETRY
                }
            };
            due.insert(name.clone(), next);
        }
        let wake = due.values().min().copied();
        tokio::select! {
            changed = policies.changed() => if changed.is_err() { return },
            _ = sleep_until(wake) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
