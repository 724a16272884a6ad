//! DNS names in FQDN egress rules and DNS rules: `matchName` and `matchPattern`, with
//! exactly the meaning CiliumNetworkPolicy gives them, so that a Cilium policy allows the
//! same names here.
//!
//! Names are compared in one canonical form: ASCII lower case with the trailing dot of a
//! fully qualified name ([`normalize`]). A `matchPattern` becomes an anchored regular
//! expression over that form, built as Cilium builds it:
//! - a pattern made only of stars (`*`, `**`, optionally followed by one dot) matches every
//!   name made of valid labels, and the root;
//! - a leading run of two or more stars followed by a dot (`**.`) matches one or more whole
//!   labels;
//! - any other run of stars matches zero or more characters within one label
//!   (`[-a-zA-Z0-9_]`), so `a**b` means the same as `a*b`;
//! - everything else is literal, dots included.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// A label's characters, as a regular expression class.
const LABEL_CHARS: &str = "[-a-zA-Z0-9_]";
/// The longest `matchName` or `matchPattern` Cilium accepts.
pub const MAX_LENGTH: usize = 255;

/// One entry of `toFQDNs` or of `rules.dns`.
#[derive(Debug, Clone)]
pub enum NamePattern {
    /// `matchName`: exactly this name (stored normalized, see [`normalize`]).
    Name(String),
    /// `matchPattern`: the source as written, and its anchored matcher.
    Pattern(String, Regex),
}

/// The form names are compared in: ASCII lower case, with one trailing dot (the root is
/// `.`).
pub fn normalize(name: &str) -> String {
    let mut n = name.to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

/// A normalized name as people write it: without the trailing dot (the root stays `.`).
pub fn display(name: &str) -> &str {
    match name.strip_suffix('.') {
        Some("") | None => name,
        Some(n) => n,
    }
}

/// Whether `s` is one or more labels of `[-a-zA-Z0-9_]` (plus `extra`), each followed by
/// at most one dot: Cilium's schema for these fields (`^([-a-zA-Z0-9_*]+[.]?)+$`).
fn well_formed(s: &str, extra: Option<u8>) -> bool {
    let label = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || Some(b) == extra;
    !s.is_empty()
        && s.len() <= MAX_LENGTH
        && s.bytes().all(|b| b == b'.' || label(b))
        && !s.starts_with('.')
        && !s.contains("..")
}

/// Whether a pattern is only stars, optionally followed by one dot: it matches every name.
fn is_wildcard(pattern: &str) -> bool {
    let stars = pattern.strip_suffix('.').unwrap_or(pattern);
    !stars.is_empty() && stars.bytes().all(|b| b == b'*')
}

/// The anchored regular expression Cilium builds for a pattern (already lower case).
fn to_regex(pattern: &str) -> String {
    if is_wildcard(pattern) {
        return format!("(^({LABEL_CHARS}+[.])+$)|(^[.]$)");
    }
    // As Cilium's `Sanitize`: compare fully qualified.
    let pattern = normalize(pattern);
    let bytes = pattern.as_bytes();
    let mut re = String::with_capacity(pattern.len() * 3 + 40);
    re.push('^');
    let stars = bytes.iter().take_while(|&&b| b == b'*').count();
    let mut i = 0;
    if stars >= 2 && bytes.get(stars) == Some(&b'.') {
        re.push_str(&format!("({LABEL_CHARS}+([.]{LABEL_CHARS}+){{0,}})[.]"));
        i = stars + 1;
    }
    while i < bytes.len() {
        match bytes[i] {
            b'.' => re.push_str("[.]"),
            b'*' => {
                while bytes.get(i + 1) == Some(&b'*') {
                    i += 1;
                }
                re.push_str(LABEL_CHARS);
                re.push('*');
            }
            b => re.push(b as char),
        }
        i += 1;
    }
    re.push('$');
    re
}

impl NamePattern {
    /// A `matchName` entry.
    pub fn name(name: &str) -> Result<Self, String> {
        if !well_formed(name, None) {
            return Err(format!(
                "{name:?} is not a DNS name: labels of letters, digits, '-' and '_' separated \
                 by single dots, at most {MAX_LENGTH} characters"
            ));
        }
        Ok(Self::Name(normalize(name)))
    }

    /// A `matchPattern` entry (see the module's documentation for what it matches).
    pub fn pattern(pattern: &str) -> Result<Self, String> {
        if !well_formed(pattern, Some(b'*')) {
            return Err(format!(
                "{pattern:?} is not a name pattern: labels of letters, digits, '-', '_' and \
                 '*' separated by single dots, at most {MAX_LENGTH} characters"
            ));
        }
        let lower = pattern.to_ascii_lowercase();
        if !lower.contains('*') {
            // Without a star the expression is the name itself: compare it as one.
            return Ok(Self::Pattern(pattern.to_owned(), literal(&lower)?));
        }
        let regex = Regex::new(&to_regex(&lower)).map_err(|e| e.to_string())?;
        Ok(Self::Pattern(pattern.to_owned(), regex))
    }

    /// Whether a normalized name (see [`normalize`]) is allowed by this entry.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Name(n) => n == name,
            Self::Pattern(_, re) => re.is_match(name),
        }
    }

    /// The name of a `matchName` entry (normalized), which the proxy resolves itself.
    pub fn exact_name(&self) -> Option<&str> {
        match self {
            Self::Name(n) => Some(n),
            Self::Pattern(..) => None,
        }
    }
}

/// The matcher of a pattern without a star: the name, anchored, as a regular expression
/// (so that `Pattern` keeps one representation).
fn literal(lower: &str) -> Result<Regex, String> {
    Regex::new(&format!("^{}$", regex::escape(&normalize(lower)))).map_err(|e| e.to_string())
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(display(n)),
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
            Self::Name(n) => Wire::MatchName(display(n).to_owned()),
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

    /// Whether `pattern` matches `name`, written as Cilium's tests write names (fully
    /// qualified; the empty string stands for no name, which nothing matches).
    fn m(pattern: &str, name: &str) -> bool {
        !name.is_empty()
            && NamePattern::pattern(pattern)
                .unwrap()
                .matches(&normalize(name))
    }

    /// Cases from Cilium's own matchpattern tests (accepted and rejected names), for the
    /// patterns its current code gives the same meaning (leading `**.` only).
    #[test]
    fn cilium_matching_cases() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "cilium.io.",
                &["cilium.io."],
                &[
                    "",
                    "anysub.cilium.io.",
                    "anysub.ci.io.",
                    "anysub.ciliumandmore.io.",
                ],
            ),
            (
                "*.cilium.io.",
                &["anysub.cilium.io."],
                &[
                    "",
                    "cilium.io.",
                    "anysub.ci.io.",
                    "anysub.ciliumandmore.io.",
                ],
            ),
            (
                "*.ci*.io.",
                &[
                    "anysub.cilium.io.",
                    "anysub.ci.io.",
                    "anysub.ciliumandmore.io.",
                ],
                &[
                    "",
                    "ci.io.",
                    "cilium.io.",
                    "service.namesace.svc.cluster.local.",
                ],
            ),
            (
                "*",
                &[
                    "io.",
                    "cilium.io.",
                    "svc.cluster.local.",
                    "service.namesace.svc.cluster.local.",
                    "_foobar._tcp.cilium.io.",
                ],
                &["", ".io.", ".cilium.io.", ".svc.cluster.local."],
            ),
            (
                "_foobar._tcp.cilium.io.",
                &["_foobar._tcp.cilium.io."],
                &["", "_tcp.cilium.io.", "cilium.io."],
            ),
            ("*.*.cilium.io.", &["_foobar._tcp.cilium.io."], &[""]),
            (
                "**.cilium.io.",
                &[
                    "anysub.cilium.io.",
                    "_foobar._tcp.cilium.io.",
                    "sub11.sub22.sub33._foobar._tcp.cilium.io.",
                ],
                &[
                    "",
                    "cilium.io.",
                    "anysub.ci.io.",
                    "anysub.ciliumandmore.io.",
                ],
            ),
            (
                "**.ci*.io.",
                &[
                    "anysub.cilium.io.",
                    "anysub.ci.io.",
                    "1.anysub.ciliumandmore.io.",
                    "service.namesace.svc.ciuster.io.",
                ],
                &["", "cilium.io.", "service.namesace.svc..ciblaster.io."],
            ),
            (
                "**.*.io.",
                &["anysub.cilium.io.", "service.namesace.svc.ciuster.io."],
                &["", "io.", "..cilium.io.", "cilium.io."],
            ),
            (
                "**",
                &["io.", "cilium.io.", "service.namesace.svc.cluster.local."],
                &["", "..io.", "..cilium.io.", ".svc.cluster..local."],
            ),
            (
                "**.",
                &["io.", "cilium.io.", "_foobar._tcp.cilium.io."],
                &["", ".cilium.io.", "..cilium.io."],
            ),
        ];
        for (pattern, accept, reject) in cases {
            for name in *accept {
                assert!(m(pattern, name), "{pattern} must match {name:?}");
            }
            for name in *reject {
                assert!(!m(pattern, name), "{pattern} must not match {name:?}");
            }
        }
    }

    #[test]
    fn regexes_are_built_as_cilium_builds_them() {
        let c = LABEL_CHARS;
        for (pattern, want) in [
            ("cilium.io.", "^cilium[.]io[.]$".to_owned()),
            ("cilium.io", "^cilium[.]io[.]$".to_owned()),
            ("*.cilium.io.", format!("^{c}*[.]cilium[.]io[.]$")),
            ("*", format!("(^({c}+[.])+$)|(^[.]$)")),
            ("**.", format!("(^({c}+[.])+$)|(^[.]$)")),
            ("***", format!("(^({c}+[.])+$)|(^[.]$)")),
            (
                "**.cilium.io",
                format!("^({c}+([.]{c}+){{0,}})[.]cilium[.]io[.]$"),
            ),
            (
                "***.cilium.io",
                format!("^({c}+([.]{c}+){{0,}})[.]cilium[.]io[.]$"),
            ),
            // A run of stars anywhere else is one star: within a label.
            ("a**b.io", format!("^a{c}*b[.]io[.]$")),
            ("**cilium.io", format!("^{c}*cilium[.]io[.]$")),
            ("*.**.cilium.io", format!("^{c}*[.]{c}*[.]cilium[.]io[.]$")),
            ("cilium.**", format!("^cilium[.]{c}*[.]$")),
        ] {
            assert_eq!(to_regex(pattern), want, "{pattern}");
        }
    }

    #[test]
    fn star_stays_within_one_label() {
        assert!(m("*.github.com", "api.github.com."));
        assert!(!m("*.github.com", "github.com."));
        assert!(!m("*.github.com", "a.b.github.com."));
        assert!(m("part*ial.com", "partial.com."));
        assert!(m("part*ial.com", "part-of-ial.com."));
        assert!(!m("part*ial.com", "part.ial.com."));
        // Runs of stars mean one star.
        assert!(m("api-**.github.com", "api-v3.github.com."));
        assert!(!m("api-**.github.com", "api-v3.x.github.com."));
        assert!(!m("*.**.github.com", "a.b.c.github.com."));
        assert!(m("*.**.github.com", "a.b.github.com."));
    }

    #[test]
    fn leading_double_star_spans_labels_but_needs_one() {
        assert!(m("**.github.com", "a.b.github.com."));
        assert!(m("**.github.com", "api.github.com."));
        assert!(!m("**.github.com", "github.com."));
        assert!(m("***.github.com", "a.b.github.com."));
        // `**` not followed by a dot is a one-label star.
        assert!(m("**github.com", "github.com."));
        assert!(!m("**github.com", "api.github.com."));
    }

    #[test]
    fn a_pattern_of_stars_matches_every_name() {
        for p in ["*", "**", "*.", "**.", "****"] {
            assert!(m(p, "example.org."), "{p}");
            assert!(m(p, "localhost."), "{p}");
            assert!(m(p, "_srv._tcp.example.org."), "{p}");
            assert!(
                NamePattern::pattern(p).unwrap().matches("."),
                "{p}: the root"
            );
        }
    }

    #[test]
    fn case_trailing_dot_and_underscore() {
        let p = NamePattern::name("API.GitHub.com.").unwrap();
        assert!(p.matches(&normalize("api.github.com")));
        assert!(p.matches(&normalize("Api.GitHub.COM.")));
        assert!(!p.matches(&normalize("github.com")));
        assert_eq!(p.to_string(), "api.github.com");
        assert!(m("*.GitHub.com", "API.GITHUB.COM"));
        assert!(m("_sip._udp.example.com", "_SIP._udp.example.com."));
        assert!(m("x_*.example.com", "x_y.example.com."));
    }

    #[test]
    fn what_cilium_refuses_is_refused() {
        for bad in ["bad name", "", ".", "a..b", ".a.b", "a/b", "ä.com", "a,b"] {
            assert!(NamePattern::name(bad).is_err(), "matchName {bad:?}");
            assert!(NamePattern::pattern(bad).is_err(), "matchPattern {bad:?}");
        }
        assert!(NamePattern::name("*.a.com").is_err());
        assert!(NamePattern::name(&"a".repeat(256)).is_err());
        assert!(NamePattern::name(&"a".repeat(255)).is_ok());
        // Every placement of stars Cilium's schema allows is accepted.
        for ok in [
            "a.**.com",
            "**",
            "*",
            "*.",
            "a*",
            "**.a",
            "a.*.b.*",
            "_x.*-y_.z",
        ] {
            assert!(NamePattern::pattern(ok).is_ok(), "matchPattern {ok:?}");
        }
    }

    #[test]
    fn dots_are_literal() {
        assert!(!m("api.github.com", "apixgithub.com."));
        assert!(m("api.github.com", "API.github.com."));
    }

    #[test]
    fn wire_form_round_trips() {
        let p = NamePattern::name("Api.Example.com.").unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"matchName":"api.example.com"}"#);
        let back: NamePattern = serde_json::from_str(&json).unwrap();
        assert!(back.matches("api.example.com."));
        let p: NamePattern = serde_json::from_str(r#"{"matchPattern":"**.Example.com"}"#).unwrap();
        assert!(p.matches("a.b.example.com."));
        assert_eq!(p.to_string(), "**.Example.com");
    }
}
