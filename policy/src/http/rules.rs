//! A port's HTTP rules compiled for matching: plain paths and templates in routers, every
//! other path in one `RegexSet`, so that a request is matched against all the rules' paths
//! at once instead of rule by rule.

use std::cell::RefCell;
use std::fmt;

use regex::{RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};

use super::{compile, is_literal, one_line, HttpRule, Request, MAX_PATTERN_LEN};

/// The most memory the regular expressions of one rule set may take together.
pub const MAX_SET_SIZE: usize = 8 * 1024 * 1024;

/// What a path pattern is, as written in a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Means itself: compared as a string (through a router).
    Literal,
    /// `/orders/{id}`, `/static/{*rest}`: segments, some of them parameters.
    Template,
    /// A regular expression over the path.
    Regex,
    /// A regular expression with a `?`: matched against the path and query string.
    RegexWithQuery,
}

/// A rule's path: a regular expression, or a template such as `/api/v1/orders/{id}`.
#[derive(Debug, Clone)]
pub struct PathPattern {
    source: String,
    shape: Shape,
}

/// One segment of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    Literal(&'a str),
    Param,
    CatchAll,
}

fn identifier(s: &str) -> bool {
    s.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The segments of a template, or `None` when `s` is not one.
fn template(s: &str) -> Option<Vec<Segment<'_>>> {
    let rest = s.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len() - 1;
    let mut segments = Vec::with_capacity(parts.len());
    let mut params = 0;
    for (i, part) in parts.iter().enumerate() {
        let seg = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if i == last && name.strip_prefix('*').is_some_and(identifier) => {
                Segment::CatchAll
            }
            Some(name) if identifier(name) => Segment::Param,
            Some(_) => return None,
            None if is_literal(part) => Segment::Literal(part),
            None => return None,
        };
        params += usize::from(seg != Segment::Literal(part));
        segments.push(seg);
    }
    (params > 0).then_some(segments)
}

/// Whether some path could match both templates (literal paths are templates without
/// parameters), which a router cannot hold side by side and still report both.
fn overlap(a: &[Segment<'_>], b: &[Segment<'_>]) -> bool {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        match (x, y) {
            (Segment::CatchAll, _) => return b.len() > i,
            (_, Segment::CatchAll) => return a.len() > i,
            (Segment::Literal(p), Segment::Literal(q)) if p != q => return false,
            _ => {}
        }
    }
    a.len() == b.len()
}

fn segments(source: &str) -> Vec<Segment<'_>> {
    template(source).unwrap_or_else(|| {
        source
            .strip_prefix('/')
            .unwrap_or(source)
            .split('/')
            .map(Segment::Literal)
            .collect()
    })
}

impl PathPattern {
    /// Reads a path pattern: a template when it has `{name}` segments (and a last
    /// `{*name}`) between plain ones, otherwise an anchored regular expression.
    pub fn new(source: &str) -> Result<Self, String> {
        let shape = if source.starts_with('/') && is_literal(source) {
            Shape::Literal
        } else if template(source).is_some() {
            Shape::Template
        } else {
            compile(source)?;
            if source.contains('?') {
                Shape::RegexWithQuery
            } else {
                Shape::Regex
            }
        };
        if source.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "is {} bytes long; the limit is {MAX_PATTERN_LEN}",
                source.len()
            ));
        }
        Ok(Self {
            source: source.to_owned(),
            shape,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Two paths are the same when they are written the same.
impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for PathPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// One router of plain paths and templates, none of which overlap.
struct Layer {
    router: matchit::Router<Vec<u32>>,
    routes: Vec<(String, Vec<u32>)>,
}

/// The regular expressions of a rule set, and the rule each stands for.
struct Regexes {
    set: RegexSet,
    rules: Vec<u32>,
}

impl Regexes {
    fn new(patterns: Vec<(&str, u32)>) -> Result<Option<Self>, String> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let set = RegexSetBuilder::new(patterns.iter().map(|(p, _)| format!("^(?:{p})$")))
            .size_limit(MAX_SET_SIZE)
            .build()
            .map_err(|e| format!("the paths of these rules together: {}", one_line(&e)))?;
        Ok(Some(Self {
            set,
            rules: patterns.into_iter().map(|(_, i)| i).collect(),
        }))
    }

    fn mark(&self, subject: &str, hits: &mut [bool]) {
        for i in self.set.matches(subject).iter() {
            hits[self.rules[i] as usize] = true;
        }
    }
}

/// The HTTP rules of one port of one policy rule, compiled: a request is allowed when any
/// of them matches it.
pub struct HttpRules {
    rules: Vec<HttpRule>,
    /// Rules without a path.
    any_path: Vec<u32>,
    layers: Vec<Layer>,
    paths: Option<Regexes>,
    with_query: Option<Regexes>,
}

thread_local! {
    /// Which rules' paths matched the request being judged, reused between requests.
    static HITS: RefCell<Vec<bool>> = const { RefCell::new(Vec::new()) };
}

impl HttpRules {
    /// Compiles the rules; fails when their expressions together are too large.
    pub fn new(rules: Vec<HttpRule>) -> Result<Self, String> {
        let mut any_path = Vec::new();
        let mut layers: Vec<Layer> = Vec::new();
        let (mut paths, mut with_query) = (Vec::new(), Vec::new());
        for (i, rule) in rules.iter().enumerate() {
            let i = i as u32;
            let Some(p) = &rule.path else {
                any_path.push(i);
                continue;
            };
            match p.shape {
                Shape::Regex => paths.push((p.as_str(), i)),
                Shape::RegexWithQuery => with_query.push((p.as_str(), i)),
                Shape::Literal | Shape::Template => insert(&mut layers, p.as_str(), i),
            }
        }
        for layer in &mut layers {
            for (route, value) in &layer.routes {
                // A layer holds only routes that never overlap, which the router accepts.
                layer
                    .router
                    .insert(route.as_str(), value.clone())
                    .map_err(|e| format!("path {route:?}: {e}"))?;
            }
        }
        Ok(Self {
            any_path,
            layers,
            paths: Regexes::new(paths)?,
            with_query: Regexes::new(with_query)?,
            rules,
        })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[HttpRule] {
        &self.rules
    }

    /// The index of the first rule that allows the request.
    pub fn first_match(&self, req: &impl Request) -> Option<u32> {
        HITS.with_borrow_mut(|hits| {
            hits.clear();
            hits.resize(self.rules.len(), false);
            for &i in &self.any_path {
                hits[i as usize] = true;
            }
            let path = req.path();
            for layer in &self.layers {
                if let Ok(m) = layer.router.at(path) {
                    for &i in m.value {
                        hits[i as usize] = true;
                    }
                }
            }
            if let Some(r) = &self.paths {
                r.mark(path, hits);
            }
            if let Some(r) = &self.with_query {
                match req.query() {
                    Some(q) => r.mark(&format!("{path}?{q}"), hits),
                    None => r.mark(path, hits),
                }
            }
            hits.iter()
                .zip(&self.rules)
                .position(|(&hit, rule)| hit && rule.matches_besides_path(req))
                .map(|i| i as u32)
        })
    }
}

/// Puts a plain path or template in the first layer where it overlaps nothing (the same
/// route twice shares one entry).
fn insert(layers: &mut Vec<Layer>, route: &str, rule: u32) {
    let new = segments(route);
    for layer in layers.iter_mut() {
        if let Some((_, rules)) = layer.routes.iter_mut().find(|(r, _)| r == route) {
            rules.push(rule);
            return;
        }
        if !layer
            .routes
            .iter()
            .any(|(r, _)| overlap(&segments(r), &new))
        {
            layer.routes.push((route.to_owned(), vec![rule]));
            return;
        }
    }
    layers.push(Layer {
        router: matchit::Router::new(),
        routes: vec![(route.to_owned(), vec![rule])],
    });
}

impl fmt::Debug for HttpRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.rules).finish()
    }
}

/// Two rule sets are the same when their rules are.
impl PartialEq for HttpRules {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules
    }
}

impl Serialize for HttpRules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.rules.serialize(s)
    }
}

impl<'de> Deserialize<'de> for HttpRules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(Vec::<HttpRule>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Anchored, HeaderMatch, PlainRequest};
    use super::*;

    fn rule(method: Option<&str>, path: Option<&str>) -> HttpRule {
        HttpRule {
            method: method.map(|m| Anchored::new(m).unwrap()),
            path: path.map(|p| PathPattern::new(p).unwrap()),
            ..Default::default()
        }
    }

    fn req(method: &str, target: &str) -> PlainRequest {
        PlainRequest::new(method, target).unwrap()
    }

    fn first(rules: &HttpRules, method: &str, target: &str) -> Option<u32> {
        rules.first_match(&req(method, target))
    }

    #[test]
    fn the_seed_rules() {
        let rules = HttpRules::new(vec![
            rule(Some("GET"), Some("/api/v1/.*")),
            rule(Some("POST"), Some("/api/v1/orders")),
        ])
        .unwrap();
        assert_eq!(first(&rules, "GET", "/api/v1/orders"), Some(0));
        assert_eq!(first(&rules, "POST", "/api/v1/orders"), Some(1));
        assert_eq!(first(&rules, "POST", "/api/v1/orders/1"), None);
        assert_eq!(first(&rules, "GET", "/api/v2/orders"), None);
        assert_eq!(first(&rules, "GETX", "/api/v1/orders"), None);
        assert_eq!(first(&rules, "get", "/api/v1/orders"), None);
        assert_eq!(first(&rules, "GET", "/x/api/v1/orders"), None);
        // Judged after normalisation: what the app gets.
        assert_eq!(first(&rules, "GET", "/api/v1/../admin"), None);
        assert_eq!(first(&rules, "POST", "//api/v1/orders"), Some(1));
        // The query string is not part of the path.
        assert_eq!(first(&rules, "POST", "/api/v1/orders?x=1"), Some(1));
    }

    #[test]
    fn templates_and_overlapping_plain_paths_both_count() {
        let rules = HttpRules::new(vec![
            rule(Some("DELETE"), Some("/orders/{id}")),
            rule(Some("GET"), Some("/orders/latest")),
            rule(Some("PUT"), Some("/orders/{order}")),
            rule(Some("GET"), Some("/static/{*rest}")),
            rule(Some("PATCH"), Some("/orders/{id}")),
        ])
        .unwrap();
        assert_eq!(
            rules.layers.len(),
            3,
            "{:?}",
            rules.layers.iter().map(|l| &l.routes).collect::<Vec<_>>()
        );
        assert_eq!(first(&rules, "DELETE", "/orders/latest"), Some(0));
        assert_eq!(first(&rules, "GET", "/orders/latest"), Some(1));
        assert_eq!(first(&rules, "PUT", "/orders/7"), Some(2));
        assert_eq!(first(&rules, "PATCH", "/orders/7"), Some(4));
        assert_eq!(first(&rules, "DELETE", "/orders/7/items"), None);
        assert_eq!(first(&rules, "DELETE", "/orders/"), None);
        assert_eq!(first(&rules, "GET", "/static/css/a.css"), Some(3));
        assert_eq!(first(&rules, "GET", "/static/"), None);
    }

    #[test]
    fn a_pattern_with_a_question_mark_sees_the_query() {
        let rules = HttpRules::new(vec![
            rule(None, Some(r"/search\?q=[a-z]+")),
            rule(None, Some("/items?")),
        ])
        .unwrap();
        assert_eq!(first(&rules, "GET", "/search?q=abc"), Some(0));
        assert_eq!(first(&rules, "GET", "/search?q=abc&admin=1"), None);
        assert_eq!(first(&rules, "GET", "/search"), None);
        assert_eq!(first(&rules, "GET", "/item"), Some(1));
        assert_eq!(first(&rules, "GET", "/items?x"), None);
    }

    #[test]
    fn method_host_and_headers_narrow_a_path() {
        let mut r = rule(Some("GET|HEAD"), None);
        r.host = Some(Anchored::new(r"api\.example\.com").unwrap());
        r.headers = vec![
            HeaderMatch::parse("X-Team: payments").unwrap(),
            HeaderMatch::new("x-trace", None).unwrap(),
        ];
        let rules = HttpRules::new(vec![r]).unwrap();
        let mut q = req("HEAD", "/anything");
        assert_eq!(rules.first_match(&q), None);
        q.host = Some("api.example.com".into());
        q.headers = vec![("x-team".into(), "payments".into())];
        assert_eq!(rules.first_match(&q), None, "x-trace is missing");
        q.headers.push(("x-trace".into(), "1".into()));
        assert_eq!(rules.first_match(&q), Some(0));
        q.headers.push(("x-team".into(), "other".into()));
        assert_eq!(
            rules.first_match(&q),
            None,
            "a second, different value denies"
        );
        q.headers.retain(|(n, _)| n != "x-team");
        q.headers.push(("x-team".into(), "Payments".into()));
        assert_eq!(rules.first_match(&q), None, "values are exact");
    }

    #[test]
    fn a_hundred_rules_keep_their_order() {
        let rules: Vec<HttpRule> = (0..100)
            .map(|i| match i % 3 {
                0 => rule(Some("GET"), Some(&format!("/svc{i}/.*"))),
                1 => rule(Some("POST"), Some(&format!("/svc{i}/items/{{id}}"))),
                _ => rule(Some("GET"), Some(&format!("/svc{i}/health"))),
            })
            .collect();
        let rules = HttpRules::new(rules).unwrap();
        assert_eq!(first(&rules, "GET", "/svc99/x"), Some(99));
        assert_eq!(first(&rules, "POST", "/svc1/items/3"), Some(1));
        assert_eq!(first(&rules, "GET", "/svc2/health"), Some(2));
        assert_eq!(first(&rules, "GET", "/svc2/other"), None);
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(PathPattern::new("/a/(")
            .unwrap_err()
            .contains("unclosed group"));
        let long = format!("/{}", "a".repeat(MAX_PATTERN_LEN));
        assert!(PathPattern::new(&long)
            .unwrap_err()
            .contains("limit is 1024"));
        let huge = "/(\\w{50}){50}";
        assert!(
            PathPattern::new(huge)
                .unwrap_err()
                .contains("compiles to more than"),
            "{:?}",
            PathPattern::new(huge)
        );
        assert!(PathPattern::new("/orders/{id}/{x").is_err());
    }

    #[test]
    fn template_overlap() {
        let o = |a: &str, b: &str| overlap(&segments(a), &segments(b));
        assert!(o("/a/{x}", "/a/b"));
        assert!(o("/a/{x}", "/a/{y}"));
        assert!(!o("/a/{x}", "/a/b/c"));
        assert!(o("/a/{*r}", "/a/b/c"));
        assert!(!o("/a/{*r}", "/a"));
        assert!(!o("/a/{x}/c", "/a/b/d"));
        assert!(o("/{*r}", "/{*s}"));
    }
}
