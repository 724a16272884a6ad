//! DNS names in FQDN egress rules: `matchName` and `matchPattern`, as CiliumNetworkPolicy
//! means them.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// One entry of `toFQDNs`.
#[derive(Debug, Clone)]
pub enum NamePattern {
    /// `matchName`: exactly this name (stored lower case, without the trailing dot).
    Name(String),
    /// `matchPattern`: the source as written, and its anchored matcher.
    Pattern(String, Regex),
}

/// A label's characters in a `*` wildcard.
const LABEL_CHARS: &str = "[-a-zA-Z0-9_]";

/// Lower case, without the trailing dot: the form names are compared in.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn valid_chars(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || extra.contains(&b)
        })
        && !s.contains("..")
}

impl NamePattern {
    /// A `matchName` entry.
    pub fn name(name: &str) -> Result<Self, String> {
        if !valid_chars(name, b"") {
            return Err(format!(
                "{name:?} is not a DNS name (letters, digits, '-', '_' and '.')"
            ));
        }
        Ok(Self::Name(normalize(name)))
    }

    /// A `matchPattern` entry: `*` matches within one label, a leading `**.` matches one or
    /// more labels, a lone `*` matches every name.
    pub fn pattern(pattern: &str) -> Result<Self, String> {
        let norm = normalize(pattern);
        let (multi, rest) = match norm.strip_prefix("**.") {
            Some(rest) => (true, rest),
            None => (false, norm.as_str()),
        };
        if !valid_chars(rest, b"*") || rest.contains("**") {
            return Err(format!(
                "{pattern:?} is not a name pattern ('*' within a label, a leading '**.', \
                 or a lone '*')"
            ));
        }
        let mut re = String::from("^");
        if norm == "*" {
            re.push_str(".+");
        } else {
            if multi {
                re.push_str(&format!("(?:{LABEL_CHARS}+\\.)+"));
            }
            for c in rest.chars() {
                match c {
                    '*' => re.push_str(&format!("{LABEL_CHARS}*")),
                    '.' => re.push_str("\\."),
                    c => re.push(c),
                }
            }
        }
        re.push('$');
        let regex = Regex::new(&re).map_err(|e| e.to_string())?;
        Ok(Self::Pattern(pattern.to_owned(), regex))
    }

    /// Whether `name` (already normalized) is allowed by this entry.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Name(n) => n == name,
            Self::Pattern(_, re) => re.is_match(name),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::Pattern(p, _) => f.write_str(p),
        }
    }
}

/// Two patterns are the same when they are written the same.
impl PartialEq for NamePattern {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Name(a), Self::Name(b)) | (Self::Pattern(a, _), Self::Pattern(b, _)) => a == b,
            _ => false,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Wire {
    MatchName(String),
    MatchPattern(String),
}

impl Serialize for NamePattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Name(n) => Wire::MatchName(n.clone()),
            Self::Pattern(p, _) => Wire::MatchPattern(p.clone()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for NamePattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Wire::deserialize(d)? {
            Wire::MatchName(n) => Self::name(&n),
            Wire::MatchPattern(p) => Self::pattern(&p),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, name: &str) -> bool {
        NamePattern::pattern(p).unwrap().matches(&normalize(name))
    }

    #[test]
    fn star_stays_within_one_label() {
        assert!(m("*.github.com", "api.github.com"));
        assert!(!m("*.github.com", "github.com."));
        assert!(!m("*.github.com", "a.b.github.com"));
        assert!(m("part*ial.com", "partial.com"));
        assert!(m("part*ial.com", "part-of-ial.com"));
        assert!(!m("part*ial.com", "part.ial.com"));
    }

    #[test]
    fn double_star_spans_labels_but_needs_one() {
        assert!(m("**.github.com", "a.b.github.com"));
        assert!(m("**.github.com", "api.github.com"));
        assert!(!m("**.github.com", "github.com"));
    }

    #[test]
    fn lone_star_matches_every_name() {
        assert!(m("*", "example.org"));
        assert!(m("*", "localhost"));
    }

    #[test]
    fn match_name_ignores_case_and_trailing_dot() {
        let p = NamePattern::name("API.GitHub.com.").unwrap();
        assert!(p.matches(&normalize("api.github.com")));
        assert!(!p.matches(&normalize("github.com")));
        assert!(NamePattern::name("bad name").is_err());
        assert!(NamePattern::pattern("a.**.com").is_err());
    }

    #[test]
    fn dots_are_literal() {
        assert!(!m("api.github.com", "apixgithub.com"));
    }
}
