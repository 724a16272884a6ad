//! What the pod resolved: DNS names and the addresses they resolve to, each with the time
//! its TTL runs out. A record allows connections until its TTL and then a grace period have
//! run out (apps reuse addresses past the TTL). The cache is bounded: names, and addresses
//! per name. When it is full it evicts what expires first, but never an address an open
//! connection uses, nor the name just learned (its answer is about to reach the app).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics;

/// How big the cache may grow, and how long records outlive their TTL.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Names kept at most.
    pub max_names: usize,
    /// Addresses kept per name at most.
    pub max_ips_per_name: usize,
    /// How long a record stays usable after its TTL ran out.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_names: 10_000,
            max_ips_per_name: 50,
            grace: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    ip: IpAddr,
    /// When the TTL runs out.
    expires: Instant,
}

#[derive(Default)]
struct Table {
    names: HashMap<Arc<str>, Vec<Record>>,
    /// The names with a record for each address.
    by_ip: HashMap<IpAddr, Vec<Arc<str>>>,
    /// Open connections per address.
    in_use: HashMap<IpAddr, u32>,
    /// Records in all.
    records: usize,
}

/// One pod's DNS cache, shared by the DNS proxy (which fills it), the listeners (which look
/// addresses up) and the admin server (which lists it).
pub struct DnsCache {
    table: Mutex<Table>,
    limits: Limits,
}

/// Why records were evicted (the metric's label).
#[derive(Debug, Clone, Copy)]
enum Eviction {
    Names,
    AddressesPerName,
}

impl Eviction {
    fn label(self) -> &'static str {
        match self {
            Eviction::Names => "names",
            Eviction::AddressesPerName => "addresses-per-name",
        }
    }
}

/// One name as the admin endpoint lists it.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// The name, as people write it.
    pub name: String,
    /// Its addresses.
    pub addresses: Vec<ListedAddress>,
}

/// One address of a listed name.
#[derive(Debug, Serialize)]
pub struct ListedAddress {
    /// The address.
    pub ip: IpAddr,
    /// Seconds until the TTL runs out (negative: in the grace period).
    pub ttl: i64,
    /// Open connections to the address.
    pub connections: u32,
}

/// Keeps an address marked as used by an open connection for as long as it lives.
pub struct InUse {
    cache: Arc<DnsCache>,
    ip: IpAddr,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut t = self.cache.lock();
        if let Some(n) = t.in_use.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.in_use.remove(&self.ip);
            }
        }
    }
}

/// The names a flow's destination was resolved from, and the mark that keeps them from
/// eviction while the flow is open.
pub struct Resolved {
    /// The names (normalized), still valid when the flow started.
    pub names: Box<[Arc<str>]>,
    _in_use: InUse,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names.iter()).finish()
    }
}

impl DnsCache {
    /// An empty cache.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Table::default()),
            limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn usable(&self, r: &Record, now: Instant) -> bool {
        r.expires + self.limits.grace > now
    }

    /// Records what an answer resolved `name` (normalized) to, each address with its TTL.
    pub fn learn(&self, name: &str, ips: &[(IpAddr, u32)], now: Instant) {
        if ips.is_empty() {
            return;
        }
        let mut t = self.lock();
        let key: Arc<str> = match t.names.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => Arc::from(name),
        };
        let mut added = Vec::new();
        {
            let records = t.names.entry(key.clone()).or_default();
            for &(ip, ttl) in ips {
                let expires = now + Duration::from_secs(u64::from(ttl));
                match records.iter_mut().find(|r| r.ip == ip) {
                    Some(r) => r.expires = r.expires.max(expires),
                    None => {
                        records.push(Record { ip, expires });
                        added.push(ip);
                    }
                }
            }
        }
        t.records += added.len();
        for ip in added {
            t.by_ip.entry(ip).or_default().push(key.clone());
        }
        if t.names[&key].len() > self.limits.max_ips_per_name {
            self.trim_name(&mut t, &key);
        }
        if t.names.len() > self.limits.max_names {
            self.sweep_locked(&mut t, now);
            if t.names.len() > self.limits.max_names {
                self.evict_names(&mut t, &key);
            }
        }
        gauges(&t);
    }

    /// Keeps the name's newest addresses, and every address in use.
    fn trim_name(&self, t: &mut Table, name: &Arc<str>) {
        let in_use = std::mem::take(&mut t.in_use);
        let Some(records) = t.names.get_mut(name) else {
            t.in_use = in_use;
            return;
        };
        records.sort_by_key(|r| std::cmp::Reverse(r.expires));
        let mut kept = 0;
        let mut dropped = Vec::new();
        records.retain(|r| {
            let keep = kept < self.limits.max_ips_per_name || in_use.contains_key(&r.ip);
            kept += usize::from(keep);
            if !keep {
                dropped.push(r.ip);
            }
            keep
        });
        t.in_use = in_use;
        for ip in &dropped {
            unlink(t, *ip, name);
        }
        t.records -= dropped.len();
        count_evictions(Eviction::AddressesPerName, dropped.len());
    }

    /// Evicts whole names, those whose last record expires first, down to 95% of the limit
    /// (so that a full cache does not sort on every answer); never `keep` nor a name with
    /// an address in use.
    fn evict_names(&self, t: &mut Table, keep: &Arc<str>) {
        let target = self.limits.max_names - self.limits.max_names / 20;
        let mut candidates: Vec<(Instant, Arc<str>)> = t
            .names
            .iter()
            .filter(|(n, rs)| *n != keep && !rs.iter().any(|r| t.in_use.contains_key(&r.ip)))
            .map(|(n, rs)| {
                (
                    rs.iter().map(|r| r.expires).max().unwrap_or(Instant::now()),
                    n.clone(),
                )
            })
            .collect();
        candidates.sort_unstable_by_key(|(e, _)| *e);
        let excess = t.names.len().saturating_sub(target);
        let mut evicted = 0;
        for (_, name) in candidates.into_iter().take(excess) {
            self.remove_name(t, &name);
            evicted += 1;
        }
        count_evictions(Eviction::Names, evicted);
    }

    fn remove_name(&self, t: &mut Table, name: &Arc<str>) {
        if let Some(records) = t.names.remove(name) {
            t.records -= records.len();
            for r in records {
                unlink(t, r.ip, name);
            }
        }
    }

    /// Drops records whose TTL and grace ran out.
    pub fn sweep(&self, now: Instant) {
        let mut t = self.lock();
        self.sweep_locked(&mut t, now);
        gauges(&t);
    }

    fn sweep_locked(&self, t: &mut Table, now: Instant) {
        let mut gone: Vec<(Arc<str>, IpAddr)> = Vec::new();
        t.names.retain(|name, records| {
            records.retain(|r| {
                let keep = self.usable(r, now);
                if !keep {
                    gone.push((name.clone(), r.ip));
                }
                keep
            });
            !records.is_empty()
        });
        t.records -= gone.len();
        for (name, ip) in gone {
            unlink(t, ip, &name);
        }
    }

    /// The names the pod resolved to `ip` whose records are still usable.
    pub fn names_for(&self, ip: IpAddr, now: Instant) -> Vec<Arc<str>> {
        let t = self.lock();
        let Some(names) = t.by_ip.get(&ip) else {
            return Vec::new();
        };
        names
            .iter()
            .filter(|n| {
                t.names
                    .get(*n)
                    .and_then(|rs| rs.iter().find(|r| r.ip == ip))
                    .is_some_and(|r| self.usable(r, now))
            })
            .cloned()
            .collect()
    }

    /// The names of `ip` for a new flow, marking the address used while the result lives;
    /// `None` when no usable record names it.
    pub fn resolve(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Option<Resolved> {
        let names = self.names_for(ip, now);
        if names.is_empty() {
            return None;
        }
        *self.lock().in_use.entry(ip).or_default() += 1;
        Some(Resolved {
            names: names.into_boxed_slice(),
            _in_use: InUse {
                cache: self.clone(),
                ip,
            },
        })
    }

    /// Every name and its addresses, sorted by name.
    pub fn list(&self, now: Instant) -> Vec<Listed> {
        let t = self.lock();
        let mut out: Vec<Listed> = t
            .names
            .iter()
            .map(|(name, records)| Listed {
                name: palisade_policy::fqdn::display(name).to_owned(),
                addresses: records
                    .iter()
                    .map(|r| ListedAddress {
                        ip: r.ip,
                        ttl: if r.expires >= now {
                            r.expires.duration_since(now).as_secs() as i64
                        } else {
                            -(now.duration_since(r.expires).as_secs() as i64)
                        },
                        connections: t.in_use.get(&r.ip).copied().unwrap_or(0),
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// How many names and records the cache holds.
    pub fn size(&self) -> (usize, usize) {
        let t = self.lock();
        (t.names.len(), t.records)
    }
}

/// Forgets that `name` has a record for `ip`.
fn unlink(t: &mut Table, ip: IpAddr, name: &Arc<str>) {
    if let Some(names) = t.by_ip.get_mut(&ip) {
        names.retain(|n| n != name);
        if names.is_empty() {
            t.by_ip.remove(&ip);
        }
    }
}

fn count_evictions(why: Eviction, n: usize) {
    if n > 0 {
        ::metrics::counter!(metrics::DNS_EVICTIONS, "reason" => why.label()).increment(n as u64);
    }
}

fn gauges(t: &Table) {
    ::metrics::gauge!(metrics::DNS_NAMES).set(t.names.len() as f64);
    ::metrics::gauge!(metrics::DNS_RECORDS).set(t.records as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn limits(names: usize, per_name: usize) -> Limits {
        Limits {
            max_names: names,
            max_ips_per_name: per_name,
            grace: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_record_lives_for_its_ttl_and_the_grace() {
        let cache = DnsCache::new(limits(10, 10));
        let t0 = Instant::now();
        cache.learn("a.example.", &[(ip(1), 30)], t0);
        assert_eq!(&*cache.names_for(ip(1), t0)[0], "a.example.");
        let in_grace = t0 + Duration::from_secs(89);
        assert_eq!(cache.names_for(ip(1), in_grace).len(), 1);
        let after = t0 + Duration::from_secs(91);
        assert!(cache.names_for(ip(1), after).is_empty());
        cache.sweep(after);
        assert_eq!(cache.size(), (0, 0));
        // A later answer with a shorter TTL never shortens a record.
        cache.learn("b.example.", &[(ip(2), 300)], t0);
        cache.learn("b.example.", &[(ip(2), 1)], t0);
        assert_eq!(
            cache.names_for(ip(2), t0 + Duration::from_secs(200)).len(),
            1
        );
    }

    #[test]
    fn two_names_may_share_an_address() {
        let cache = DnsCache::new(limits(10, 10));
        let t0 = Instant::now();
        cache.learn("a.example.", &[(ip(1), 30)], t0);
        cache.learn("b.example.", &[(ip(1), 300)], t0);
        let mut names: Vec<String> = cache
            .names_for(ip(1), t0)
            .iter()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["a.example.", "b.example."]);
        // a's record runs out first: only b still names the address.
        let later = t0 + Duration::from_secs(120);
        let names = cache.names_for(ip(1), later);
        assert_eq!(names.len(), 1);
        assert_eq!(&*names[0], "b.example.");
    }

    #[test]
    fn addresses_per_name_are_bounded_but_an_address_in_use_stays() {
        let cache = DnsCache::new(limits(10, 3));
        let t0 = Instant::now();
        cache.learn("cdn.example.", &[(ip(1), 10)], t0);
        let held = cache.resolve(ip(1), t0).unwrap();
        let more: Vec<(IpAddr, u32)> = (2..=6).map(|n| (ip(n), 100 + n)).collect();
        cache.learn("cdn.example.", &more, t0);
        // Three kept (the newest), plus the one in use although it expires first.
        assert_eq!(cache.size(), (1, 4));
        assert_eq!(cache.names_for(ip(1), t0).len(), 1, "in use: kept");
        assert!(cache.names_for(ip(2), t0).is_empty(), "oldest: evicted");
        assert_eq!(cache.names_for(ip(6), t0).len(), 1);
        drop(held);
        cache.learn("cdn.example.", &[(ip(7), 500)], t0);
        assert!(
            cache.names_for(ip(1), t0).is_empty(),
            "no longer in use: evicted"
        );
    }

    #[test]
    fn names_are_bounded_and_eviction_spares_names_in_use_and_the_newest() {
        let cache = DnsCache::new(limits(20, 5));
        let t0 = Instant::now();
        cache.learn("used.example.", &[(ip(0), 1)], t0);
        let held = cache.resolve(ip(0), t0).unwrap();
        for n in 1..=40u32 {
            cache.learn(&format!("n{n}.example."), &[(ip(n), 10 + n)], t0);
            assert!(cache.size().0 <= 20, "bounded after {n}");
        }
        assert_eq!(cache.names_for(ip(0), t0).len(), 1, "in use: kept");
        assert_eq!(cache.names_for(ip(40), t0).len(), 1, "just learned: kept");
        assert!(
            cache.names_for(ip(1), t0).is_empty(),
            "expires first: evicted"
        );
        assert_eq!(&*held.names[0], "used.example.");
        let listed = cache.list(t0);
        assert!(listed
            .iter()
            .any(|l| l.name == "used.example" && l.addresses[0].connections == 1));
    }
}
