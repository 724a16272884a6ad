//! DNS answer handling, as the DNS proxy does it before an answer reaches the app: reading
//! the answer to a query, following its CNAME chain, and learning the result into a
//! bounded cache. Never panics; learns only names on the chain from the question's name,
//! only addresses the answer section holds; the cache stays within its bounds.
#![no_main]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use libfuzzer_sys::fuzz_target;
use palisade_proxy::dns::cache::{DnsCache, Limits};
use palisade_proxy::dns::message::{answer, name_text, question, refusal};

fuzz_target!(|data: &[u8]| {
    // The question: the answer's own when it has one (so that chains are followed), else
    // a fixed one (so that mismatches are exercised).
    let parsed = Message::from_vec(data).ok();
    let (id, query) = match parsed.as_ref().map(|m| (m.metadata.id, &m.queries[..])) {
        Some((id, [q])) => (id, q.clone()),
        _ => (7, Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A)),
    };
    let mut m = Message::query();
    m.metadata.id = id;
    m.add_query(query);
    let Ok(bytes) = m.to_vec() else { return };
    let Ok(q) = question(&bytes) else { return };
    // The proxy's own refusal of that question is a message that reads back.
    let refused = refusal(&q, hickory_proto::op::ResponseCode::NXDomain);
    assert!(Message::from_vec(&refused).is_ok());

    let Ok(got) = answer(&q, data) else { return };
    let message = parsed.expect("an answer that was read parses");
    let owners: Vec<(String, IpAddr)> = message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((name_text(&r.name), IpAddr::V4(a.0))),
            RData::AAAA(a) => Some((name_text(&r.name), IpAddr::V6(a.0))),
            _ => None,
        })
        .collect();
    if let Some((first, _)) = got.resolved.first() {
        assert_eq!(*first, q.name, "the chain starts at the question");
    }
    let limits = Limits { max_names: 4, max_ips_per_name: 3, grace: Duration::from_secs(1) };
    let cache = DnsCache::new(limits);
    let now = Instant::now();
    for (name, ips) in &got.resolved {
        for (ip, _) in ips {
            assert!(owners.iter().any(|(_, a)| a == ip), "{ip} is in the answer section");
        }
        cache.learn(name, ips, now);
        let (names, records) = cache.size();
        assert!(names <= 4 && records <= 4 * 3, "bounded: {names} names, {records} records");
    }
    cache.sweep(now + Duration::from_secs(u64::from(u32::MAX) + 2));
    assert_eq!(cache.size(), (0, 0), "everything expires");
});
