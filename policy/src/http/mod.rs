//! HTTP rules on a port: method, path, host and headers, as CiliumNetworkPolicy writes them,
//! compiled once per rule set ([`HttpRules`]) and matched against a request whose path was
//! put in normal form ([`path::normalize`]).

pub mod path;
mod rules;

use std::fmt;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

pub use rules::{HttpRules, PathPattern};

/// The longest expression a rule may hold, in bytes of source.
pub const MAX_PATTERN_LEN: usize = 1024;
/// The most memory one compiled expression may take.
pub const MAX_REGEX_SIZE: usize = 256 * 1024;

/// An anchored regular expression: the whole value must match.
#[derive(Debug, Clone)]
pub struct Anchored {
    source: String,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    /// Letters, digits, `-` and `_` only: compared as a string, no regex needed.
    Literal,
    Regex(Regex),
}

/// Whether `s` means itself as a regular expression: printable ASCII without any
/// metacharacter, so it can be compared as a string.
pub(crate) fn is_literal(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_graphic() && !b"\\.+*?()|[]{}^$".contains(&b))
}

/// Compiles `source` anchored (the whole value must match), within the size limits; the
/// error is one line.
pub(crate) fn compile(source: &str) -> Result<Regex, String> {
    if source.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "is {} bytes long; the limit is {MAX_PATTERN_LEN}",
            source.len()
        ));
    }
    RegexBuilder::new(&format!("^(?:{source})$"))
        .size_limit(MAX_REGEX_SIZE)
        .build()
        .map_err(|e| one_line(&e))
}

/// The regex crate draws a caret diagram over several lines; keep its last line.
pub(crate) fn one_line(e: &regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(limit) => {
            format!("compiles to more than {limit} bytes; simplify it")
        }
        e => {
            let text = e.to_string();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            last.trim().trim_start_matches("error: ").to_owned()
        }
    }
}

impl Anchored {
    /// Compiles `source` so that it must match the whole value; the error is one line.
    pub fn new(source: &str) -> Result<Self, String> {
        let matcher = if is_literal(source) {
            Matcher::Literal
        } else {
            Matcher::Regex(compile(source)?)
        };
        Ok(Self {
            source: source.to_owned(),
            matcher,
        })
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        match &self.matcher {
            Matcher::Literal => value == self.source,
            Matcher::Regex(r) => r.is_match(value),
        }
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Two expressions are the same when they are written the same.
impl PartialEq for Anchored {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Anchored {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Anchored {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A header a request must carry: by name alone, or with an exact value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// The header name, lower case.
    pub name: String,
    /// The exact value required, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Whether `s` is a header name (an RFC 9110 token).
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl HeaderMatch {
    /// Parses `Name` or `Name: value` (an entry of `headers`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (s.trim(), None),
        };
        Self::new(name, value)
            .map_err(|_| format!("{s:?} is not a header (\"Name\" or \"Name: value\")"))
    }

    /// The header `name`, with `value` when one is required (an entry of `headerMatches`).
    pub fn new(name: &str, value: Option<&str>) -> Result<Self, String> {
        if !is_header_name(name) {
            return Err(format!("{name:?} is not a header name"));
        }
        Ok(Self {
            name: name.to_ascii_lowercase(),
            value: value.map(str::to_owned),
        })
    }

    /// Whether a request's values for this header satisfy it: present, and when a value
    /// is required, every value it carries is exactly that one (so a second copy of the
    /// header cannot sneak another value past the rule).
    pub fn matches(&self, req: &impl Request) -> bool {
        let mut present = false;
        for v in req.header_values(&self.name) {
            present = true;
            if self.value.as_ref().is_some_and(|want| want.as_bytes() != v) {
                return false;
            }
        }
        present
    }
}

/// One entry of `rules.http`: a request is allowed when every field it sets matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRule {
    /// The method, e.g. `GET` or `GET|HEAD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Anchored>,
    /// The path (normalised), with the query string only when the pattern has a `?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPattern>,
    /// The `Host` header (or `:authority`), without a port, in lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Anchored>,
    /// Headers that must be present (`headers`, `headerMatches`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// The parts of an HTTP request that rules look at.
pub trait Request {
    /// The method.
    fn method(&self) -> &str;
    /// The path, normalised ([`path::normalize`]), without the query string.
    fn path(&self) -> &str;
    /// The query string (after `?`), if any.
    fn query(&self) -> Option<&str>;
    /// The host the request names, without a port, in lower case.
    fn host(&self) -> Option<&str>;
    /// Every value of a header (name in lower case), in order.
    fn header_values(&self, name: &str) -> impl Iterator<Item = &[u8]>;
}

impl HttpRule {
    /// Whether the request satisfies every field this rule sets other than its path (which
    /// [`HttpRules`] matches for all rules at once).
    fn matches_besides_path(&self, req: &impl Request) -> bool {
        self.method
            .as_ref()
            .is_none_or(|m| m.is_match(req.method()))
            && self
                .host
                .as_ref()
                .is_none_or(|h| req.host().is_some_and(|v| h.is_match(v)))
            && self.headers.iter().all(|h| h.matches(req))
    }
}

impl fmt::Display for HttpRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = self.method.as_ref().map_or(".*", |m| m.as_str());
        let path = self.path.as_ref().map_or(".*", |p| p.as_str());
        write!(f, "{method} {path}")?;
        if let Some(h) = &self.host {
            write!(f, " host {}", h.as_str())?;
        }
        for h in &self.headers {
            match &h.value {
                Some(v) => write!(f, " [{}: {v}]", h.name)?,
                None => write!(f, " [{}]", h.name)?,
            }
        }
        Ok(())
    }
}

/// A request given as plain parts, for offline checks.
#[derive(Debug, Clone, Default)]
pub struct PlainRequest {
    /// The method.
    pub method: String,
    /// The path, normalised, without the query string.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The host, if any.
    pub host: Option<String>,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl PlainRequest {
    /// A request for `target` (a path with an optional `?query`), its path normalised as the
    /// proxy does; the error says why the proxy would refuse it.
    pub fn new(method: &str, target: &str) -> Result<Self, path::PathError> {
        let (p, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (target, None),
        };
        Ok(Self {
            method: method.to_owned(),
            path: path::normalize(p)?.into_owned(),
            query,
            ..Default::default()
        })
    }
}

impl Request for PlainRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
    fn header_values(&self, name: &str) -> impl Iterator<Item = &[u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_bytes())
    }
}
