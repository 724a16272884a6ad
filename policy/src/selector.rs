//! Kubernetes label selectors: `matchLabels` and `matchExpressions`, ANDed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The labels of an object.
pub type Labels = BTreeMap<String, String>;

/// A label selector. The empty selector matches every object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LabelSelector {
    /// Every pair must be present with this exact value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_labels: Vec<(String, String)>,
    /// Every requirement must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the key's value is tested.
    pub operator: Operator,
    /// The values for `In` and `NotIn`; empty for the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    /// The key is present with one of the values.
    In,
    /// The key is absent, or present with none of the values.
    NotIn,
    /// The key is present, whatever its value.
    Exists,
    /// The key is absent.
    DoesNotExist,
}

impl Operator {
    /// Parses the operator as the Kubernetes API spells it.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "In" => Self::In,
            "NotIn" => Self::NotIn,
            "Exists" => Self::Exists,
            "DoesNotExist" => Self::DoesNotExist,
            _ => return None,
        })
    }

    /// The operator as the Kubernetes API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        }
    }
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl LabelSelector {
    /// A selector that requires exactly these labels.
    pub fn from_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether this selector matches every object.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy every part of the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl LabelSelector {
    /// Whether every object this selector matches is matched by `broader` too, as far as
    /// the two selectors' text shows (labels of objects are not looked at). It may answer
    /// no for selectors that happen to be equivalent, never yes wrongly.
    pub fn implies(&self, broader: &LabelSelector) -> bool {
        let value = |key: &str| {
            self.match_labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
        };
        // Values the key may take under this selector, if it pins them down.
        let values = |key: &str| -> Option<Vec<&String>> {
            if let Some(v) = value(key) {
                return Some(vec![v]);
            }
            self.match_expressions
                .iter()
                .find(|r| r.key == key && r.operator == Operator::In)
                .map(|r| r.values.iter().collect())
        };
        let absent = |key: &str| {
            self.match_expressions
                .iter()
                .any(|r| r.key == key && r.operator == Operator::DoesNotExist)
        };
        broader
            .match_labels
            .iter()
            .all(|(k, v)| values(k).is_some_and(|vs| vs.iter().all(|x| *x == v)))
            && broader.match_expressions.iter().all(|want| {
                self.match_expressions.contains(want)
                    || match want.operator {
                        Operator::Exists => values(&want.key).is_some(),
                        Operator::In => values(&want.key)
                            .is_some_and(|vs| vs.iter().all(|x| want.values.contains(x))),
                        Operator::NotIn => {
                            absent(&want.key)
                                || values(&want.key)
                                    .is_some_and(|vs| vs.iter().all(|x| !want.values.contains(x)))
                        }
                        Operator::DoesNotExist => absent(&want.key),
                    }
            })
    }
}

impl std::fmt::Display for LabelSelector {
    /// Writes the selector the way `kubectl get -l` reads it; `{}` for the empty selector.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut first = true;
        let mut sep = |f: &mut std::fmt::Formatter<'_>| {
            if !std::mem::take(&mut first) {
                f.write_str(",")?;
            }
            Ok(())
        };
        for (k, v) in &self.match_labels {
            sep(f)?;
            write!(f, "{k}={v}")?;
        }
        for r in &self.match_expressions {
            sep(f)?;
            match r.operator {
                Operator::In => write!(f, "{} in ({})", r.key, r.values.join(","))?,
                Operator::NotIn => write!(f, "{} notin ({})", r.key, r.values.join(","))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::default().matches(&Labels::new()));
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn not_in_and_does_not_exist_match_objects_without_the_key() {
        let none = Labels::new();
        assert!(req("env", Operator::NotIn, &["prod"]).matches(&none));
        assert!(req("env", Operator::DoesNotExist, &[]).matches(&none));
        assert!(!req("env", Operator::In, &["prod"]).matches(&none));
        assert!(!req("env", Operator::Exists, &[]).matches(&none));
        let prod = labels(&[("env", "prod")]);
        assert!(!req("env", Operator::NotIn, &["prod", "qa"]).matches(&prod));
        assert!(req("env", Operator::NotIn, &["qa"]).matches(&prod));
    }

    #[test]
    fn a_narrower_selector_implies_a_broader_one() {
        let web = LabelSelector::from_labels([("app", "web")]);
        let web_prod = LabelSelector::from_labels([("app", "web"), ("env", "prod")]);
        assert!(web_prod.implies(&web));
        assert!(!web.implies(&web_prod));
        assert!(web.implies(&LabelSelector::default()));
        assert!(!LabelSelector::default().implies(&web));
        let in_ab = LabelSelector {
            match_expressions: vec![req("app", Operator::In, &["web", "api"])],
            ..Default::default()
        };
        assert!(web.implies(&in_ab));
        assert!(!in_ab.implies(&web));
        let has_app = LabelSelector {
            match_expressions: vec![req("app", Operator::Exists, &[])],
            ..Default::default()
        };
        assert!(in_ab.implies(&has_app));
        let not_db = LabelSelector {
            match_expressions: vec![req("app", Operator::NotIn, &["db"])],
            ..Default::default()
        };
        assert!(in_ab.implies(&not_db));
        assert!(!has_app.implies(&not_db));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: vec![("app".into(), "web".into())],
            match_expressions: vec![req("tier", Operator::In, &["a", "b"])],
        };
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "b")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert!(!sel.matches(&labels(&[("app", "db"), ("tier", "a")])));
        assert_eq!(sel.to_string(), "app=web,tier in (a,b)");
    }
}
