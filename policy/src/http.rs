//! HTTP rules on a port: method, path, host and headers, as CiliumNetworkPolicy writes them.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// An anchored regular expression: the whole value must match.
#[derive(Debug, Clone)]
pub struct Anchored {
    source: String,
    regex: Regex,
}

impl Anchored {
    /// Compiles `source` so that it must match the whole value; the error is one line.
    pub fn new(source: &str) -> Result<Self, String> {
        let regex = Regex::new(&format!("^(?:{source})$")).map_err(|e| {
            // The regex crate draws a caret diagram over several lines; keep its last line.
            let text = e.to_string();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            last.trim().trim_start_matches("error: ").to_owned()
        })?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
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

/// A header a request must carry: `Name` alone, or `Name: value` for an exact value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// The header name, lower case.
    pub name: String,
    /// The exact value required, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl HeaderMatch {
    /// Parses `Name` or `Name: value`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_owned())),
            None => (s.trim(), None),
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(format!(
                "{s:?} is not a header (\"Name\" or \"Name: value\")"
            ));
        }
        Ok(Self {
            name: name.to_ascii_lowercase(),
            value,
        })
    }
}

/// One entry of `rules.http`: a request is allowed when every field it sets matches.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HttpRule {
    /// The method, e.g. `GET` or `GET|HEAD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Anchored>,
    /// The path, without the query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Anchored>,
    /// The `Host` header (or `:authority`), without a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Anchored>,
    /// Headers that must be present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// The parts of an HTTP request that rules look at.
pub trait Request {
    /// The method.
    fn method(&self) -> &str;
    /// The path, without the query string.
    fn path(&self) -> &str;
    /// The host the request names, without a port.
    fn host(&self) -> Option<&str>;
    /// The first value of a header (name in lower case).
    fn header(&self, name: &str) -> Option<&str>;
}

impl HttpRule {
    /// Whether the request satisfies every field this rule sets.
    pub fn matches(&self, req: &dyn Request) -> bool {
        self.method
            .as_ref()
            .is_none_or(|m| m.is_match(req.method()))
            && self.path.as_ref().is_none_or(|p| p.is_match(req.path()))
            && self
                .host
                .as_ref()
                .is_none_or(|h| req.host().is_some_and(|v| h.is_match(v)))
            && self
                .headers
                .iter()
                .all(|h| match (req.header(&h.name), &h.value) {
                    (Some(_), None) => true,
                    (Some(got), Some(want)) => got == want,
                    (None, _) => false,
                })
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
    /// The path, without the query string.
    pub path: String,
    /// The host, if any.
    pub host: Option<String>,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Request for PlainRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> PlainRequest {
        PlainRequest {
            method: method.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn method_and_path_are_anchored() {
        let rule = HttpRule {
            method: Some(Anchored::new("GET").unwrap()),
            path: Some(Anchored::new("/api/v1/.*").unwrap()),
            ..Default::default()
        };
        assert!(rule.matches(&req("GET", "/api/v1/orders")));
        assert!(!rule.matches(&req("GETX", "/api/v1/orders")));
        assert!(!rule.matches(&req("GET", "/x/api/v1/orders")));
        assert!(!rule.matches(&req("POST", "/api/v1/orders")));
    }

    #[test]
    fn alternation_is_anchored_as_a_whole() {
        let m = Anchored::new("GET|HEAD").unwrap();
        assert!(m.is_match("HEAD"));
        assert!(!m.is_match("GETHEAD"));
        assert!(!m.is_match("XHEAD"));
    }

    #[test]
    fn headers_must_be_present_with_their_value() {
        let rule = HttpRule {
            headers: vec![HeaderMatch::parse("X-Team: payments").unwrap()],
            ..Default::default()
        };
        let mut r = req("GET", "/");
        assert!(!rule.matches(&r));
        r.headers.push(("x-team".into(), "payments".into()));
        assert!(rule.matches(&r));
        r.headers[0].1 = "other".into();
        assert!(!rule.matches(&r));
    }
}
