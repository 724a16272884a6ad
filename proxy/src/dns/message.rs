//! DNS messages as the proxy reads and writes them, through hickory-proto: the question a
//! query asks, what an answer teaches (names and the addresses they resolve to, following
//! CNAME chains inside the answer), and the refusals the proxy answers itself.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use palisade_policy::fqdn;

/// The longest CNAME chain followed inside one answer (resolvers stop at 8 to 16).
const MAX_CHAIN: usize = 16;

/// The question of a query, as the proxy judges it.
#[derive(Debug, Clone)]
pub struct Question {
    /// The message ID.
    pub id: u16,
    /// The name asked for, normalized (see [`fqdn::normalize`]).
    pub name: String,
    /// The record type asked for.
    pub qtype: RecordType,
    /// The query's question, to copy into answers the proxy gives itself.
    query: Query,
    /// Recursion desired, copied into those answers.
    recursion_desired: bool,
}

/// Why a query cannot be judged.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// It is not a DNS message.
    #[error("not a DNS message: {0}")]
    Parse(String),
    /// It is an answer, or an operation other than a standard query.
    #[error("not a standard query")]
    NotAQuery,
    /// It asks zero or several questions.
    #[error("{0} questions (one is expected)")]
    Questions(usize),
}

/// The normalized text of a name (lower case, fully qualified).
pub fn name_text(name: &Name) -> String {
    fqdn::normalize(&name.to_lowercase().to_ascii())
}

/// Reads a query: its one question.
pub fn question(bytes: &[u8]) -> Result<Question, QueryError> {
    let message = Message::from_vec(bytes).map_err(|e| QueryError::Parse(e.to_string()))?;
    if message.metadata.message_type != MessageType::Query
        || message.metadata.op_code != OpCode::Query
    {
        return Err(QueryError::NotAQuery);
    }
    let [query] = &message.queries[..] else {
        return Err(QueryError::Questions(message.queries.len()));
    };
    Ok(Question {
        id: message.metadata.id,
        name: name_text(query.name()),
        qtype: query.query_type(),
        query: query.clone(),
        recursion_desired: message.metadata.recursion_desired,
    })
}

/// The ID of a message that may not parse, to answer it with an error.
pub fn id_of(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// The proxy's own answer to a query it refuses: the question and `code`, no records.
pub fn refusal(q: &Question, code: ResponseCode) -> Vec<u8> {
    let mut m = Message::response(q.id, OpCode::Query);
    m.metadata.response_code = code;
    m.metadata.recursion_desired = q.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(q.query.clone());
    // A message of one question and a header always encodes.
    m.to_vec().unwrap_or_default()
}

/// A format error for a query that cannot be read, when its ID can.
pub fn format_error(id: u16) -> Vec<u8> {
    let mut m = Message::response(id, OpCode::Query);
    m.metadata.response_code = ResponseCode::FormErr;
    m.to_vec().unwrap_or_default()
}

/// One name an answer resolved, and its addresses with their TTLs in seconds.
pub type Resolved = (String, Vec<(IpAddr, u32)>);

/// What an answer is, once read.
#[derive(Debug)]
pub struct Answer {
    /// The response code.
    pub code: ResponseCode,
    /// Whether the answer was truncated (the app retries over TCP).
    pub truncated: bool,
    /// The names resolved: the question's name and each name of its CNAME chain, each with
    /// every address found at the end of the chain from it.
    pub resolved: Vec<Resolved>,
}

/// Why an answer teaches nothing.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// It is not a DNS message.
    #[error("not a DNS message: {0}")]
    Parse(String),
    /// It answers another query (ID or question).
    #[error("it answers another query")]
    Mismatch,
}

/// Reads the answer to `q`. Only records reachable from the question's name through the
/// answer section's CNAME chain count: a server cannot make the proxy learn addresses for
/// names the app did not ask about.
pub fn answer(q: &Question, bytes: &[u8]) -> Result<Answer, AnswerError> {
    let message = Message::from_vec(bytes).map_err(|e| AnswerError::Parse(e.to_string()))?;
    let md = &message.metadata;
    let asked = message.queries.first();
    let same_question =
        asked.is_some_and(|a| a.query_type() == q.qtype && name_text(a.name()) == q.name);
    if md.id != q.id || md.message_type != MessageType::Response || !same_question {
        return Err(AnswerError::Mismatch);
    }
    let resolved = if md.response_code == ResponseCode::NoError {
        resolve(&q.name, &message)
    } else {
        Vec::new()
    };
    Ok(Answer {
        code: md.response_code,
        truncated: md.truncation,
        resolved,
    })
}

/// Follows the chain from `name` through the answer section: every name of the chain, with
/// the addresses at its end and the smallest TTL along the way.
fn resolve(name: &str, message: &Message) -> Vec<Resolved> {
    let mut cnames: HashMap<String, (String, u32)> = HashMap::new();
    let mut addresses: HashMap<String, Vec<(IpAddr, u32)>> = HashMap::new();
    for r in &message.answers {
        let owner = name_text(&r.name);
        match &r.data {
            RData::CNAME(target) => {
                cnames
                    .entry(owner)
                    .or_insert_with(|| (name_text(&target.0), r.ttl));
            }
            RData::A(a) => addresses
                .entry(owner)
                .or_default()
                .push((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => addresses
                .entry(owner)
                .or_default()
                .push((IpAddr::V6(a.0), r.ttl)),
            _ => {}
        }
    }
    // The chain, each name with the smallest CNAME TTL from the question's name to it.
    let mut chain: Vec<(String, u32)> = vec![(name.to_owned(), u32::MAX)];
    while chain.len() < MAX_CHAIN {
        let (last, ttl) = &chain[chain.len() - 1];
        let Some((target, cname_ttl)) = cnames.get(last) else {
            break;
        };
        if chain.iter().any(|(n, _)| n == target) {
            break; // a loop
        }
        let ttl = (*ttl).min(*cname_ttl);
        chain.push((target.clone(), ttl));
    }
    // Each name learns the addresses owned by itself or any name after it in the chain,
    // with the TTL of the CNAMEs between them.
    let mut out: Vec<Resolved> = Vec::new();
    for (i, (n, _)) in chain.iter().enumerate() {
        let mut ips = Vec::new();
        for (j, (owner, _)) in chain.iter().enumerate().skip(i) {
            let Some(found) = addresses.get(owner) else {
                continue;
            };
            let between = chain[i + 1..=j]
                .iter()
                .map(|(_, t)| *t)
                .min()
                .unwrap_or(u32::MAX);
            ips.extend(found.iter().map(|&(ip, ttl)| (ip, ttl.min(between))));
        }
        if !ips.is_empty() {
            out.push((n.clone(), ips));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::Record;

    use super::*;

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn reply(q: &[u8], records: Vec<Record>) -> Vec<u8> {
        let asked = Message::from_vec(q).unwrap();
        let mut m = Message::response(asked.metadata.id, OpCode::Query);
        m.add_queries(asked.queries.clone());
        m.add_answers(records);
        m.to_vec().unwrap()
    }

    fn a(name: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(
            Name::from_str(name).unwrap(),
            ttl,
            RData::A(A(Ipv4Addr::from(ip))),
        )
    }

    fn cname(name: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(
            Name::from_str(name).unwrap(),
            ttl,
            RData::CNAME(CNAME(Name::from_str(target).unwrap())),
        )
    }

    #[test]
    fn a_query_s_question_is_read_normalized() {
        let q = question(&query("API.Example.com.", RecordType::AAAA)).unwrap();
        assert_eq!(q.name, "api.example.com.");
        assert_eq!(q.qtype, RecordType::AAAA);
        assert_eq!(q.id, 4242);
        assert!(question(b"\x00\x01garbage").is_err());
        let answer = reply(&query("a.example.", RecordType::A), vec![]);
        assert!(matches!(question(&answer), Err(QueryError::NotAQuery)));
    }

    #[test]
    fn a_cname_chain_teaches_every_name_of_it_with_the_smallest_ttl() {
        let q = query("www.shop.example.", RecordType::A);
        let bytes = reply(
            &q,
            vec![
                cname("www.shop.example.", 300, "shop.cdn.example."),
                cname("shop.cdn.example.", 60, "edge-7.cdn.example."),
                a("edge-7.cdn.example.", 120, [192, 0, 2, 7]),
                a("edge-7.cdn.example.", 30, [192, 0, 2, 8]),
                // Not on the chain: never learned.
                a("api.github.com.", 3600, [203, 0, 113, 1]),
            ],
        );
        let got = answer(&question(&q).unwrap(), &bytes).unwrap();
        let ip7 = IpAddr::from([192, 0, 2, 7]);
        let ip8 = IpAddr::from([192, 0, 2, 8]);
        assert_eq!(
            got.resolved,
            vec![
                ("www.shop.example.".to_owned(), vec![(ip7, 60), (ip8, 30)]),
                ("shop.cdn.example.".to_owned(), vec![(ip7, 60), (ip8, 30)]),
                (
                    "edge-7.cdn.example.".to_owned(),
                    vec![(ip7, 120), (ip8, 30)]
                ),
            ]
        );
    }

    #[test]
    fn loops_mismatches_and_errors_teach_nothing() {
        let q = query("loop.example.", RecordType::A);
        let bytes = reply(
            &q,
            vec![
                cname("loop.example.", 60, "back.example."),
                cname("back.example.", 60, "loop.example."),
            ],
        );
        let question = question(&q).unwrap();
        assert!(answer(&question, &bytes).unwrap().resolved.is_empty());
        // Another ID.
        let other = query("loop.example.", RecordType::A);
        let mut m =
            Message::from_vec(&reply(&other, vec![a("loop.example.", 9, [1, 2, 3, 4])])).unwrap();
        m.metadata.id = 1;
        assert!(matches!(
            answer(&question, &m.to_vec().unwrap()),
            Err(AnswerError::Mismatch)
        ));
        // Another question.
        let bytes = reply(
            &query("other.example.", RecordType::A),
            vec![a("other.example.", 9, [1, 2, 3, 4])],
        );
        assert!(matches!(
            answer(&question, &bytes),
            Err(AnswerError::Mismatch)
        ));
    }

    #[test]
    fn aaaa_records_and_refusals() {
        let q = query("v6.example.", RecordType::AAAA);
        let record = Record::from_rdata(
            Name::from_str("v6.example.").unwrap(),
            5,
            RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
        );
        let question = question(&q).unwrap();
        let got = answer(&question, &reply(&q, vec![record])).unwrap();
        assert_eq!(
            got.resolved[0].1,
            vec![(IpAddr::V6(Ipv6Addr::LOCALHOST), 5)]
        );

        let refused = Message::from_vec(&refusal(&question, ResponseCode::NXDomain)).unwrap();
        assert_eq!(refused.metadata.id, 4242);
        assert_eq!(refused.metadata.response_code, ResponseCode::NXDomain);
        assert!(refused.metadata.recursion_desired);
        assert_eq!(refused.queries.len(), 1);
        assert!(refused.answers.is_empty());
    }
}
