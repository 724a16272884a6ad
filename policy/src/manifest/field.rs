//! Walking a document field by field, keeping each field's path and line so that an error
//! can say exactly where it is.

use std::cell::RefCell;

use crate::document::{Node, Value};
use crate::policy::Origin;
use crate::ports::{PortRef, Protocol};
use crate::selector::Labels;

/// What is wrong with one field of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The line of the field (of its parent when the field is missing; 0 when unknown).
    pub line: u32,
    /// The field's path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub path: String,
    /// What is wrong, and what to do about it.
    pub message: String,
}

/// Where the errors of one object are collected while it is read.
#[derive(Default)]
pub(crate) struct Errors(RefCell<Vec<FieldError>>);

impl Errors {
    pub(crate) fn into_inner(self) -> Vec<FieldError> {
        self.0.into_inner()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}

/// A field of an object: its value if present, and where it is.
#[derive(Clone)]
pub(crate) struct Field<'a> {
    node: Option<&'a Node>,
    path: String,
    line: u32,
    errors: &'a Errors,
}

impl<'a> Field<'a> {
    /// The whole object.
    pub(crate) fn root(node: &'a Node, errors: &'a Errors) -> Self {
        Self {
            node: Some(node),
            path: String::new(),
            line: node.line,
            errors,
        }
    }

    /// Where this field is written.
    pub(crate) fn origin(&self) -> Origin {
        Origin {
            field: self.path.clone(),
            line: self.line,
        }
    }

    /// Records an error about this field.
    pub(crate) fn error(&self, message: impl Into<String>) {
        self.errors.0.borrow_mut().push(FieldError {
            line: self.line,
            path: self.path.clone(),
            message: message.into(),
        });
    }

    fn wrong_type(&self, want: &str) {
        if let Some(n) = self.node {
            self.error(format!("must be {want}, not {}", n.value.type_name()));
        }
    }

    /// The field's value, unless it is missing or null.
    pub(crate) fn value(&self) -> Option<&'a Value> {
        self.node
            .map(|n| &n.value)
            .filter(|v| !matches!(v, Value::Null))
    }

    /// Whether the field is present and not null.
    pub(crate) fn is_set(&self) -> bool {
        self.value().is_some()
    }

    fn child(&self, path: String, node: Option<&'a Node>) -> Field<'a> {
        Field {
            line: node.map_or(self.line, |n| n.line),
            node,
            path,
            errors: self.errors,
        }
    }

    /// The field `key` of this mapping (missing if this is not a mapping).
    pub(crate) fn get(&self, key: &str) -> Field<'a> {
        let path = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        };
        let node = match self.value() {
            Some(Value::Map(m)) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        };
        self.child(path, node)
    }

    /// The entries of this mapping; an error if it is set and is something else.
    pub(crate) fn entries(&self) -> &'a [(String, Node)] {
        match self.value() {
            Some(Value::Map(m)) => m,
            None => &[],
            Some(_) => {
                self.wrong_type("a mapping");
                &[]
            }
        }
    }

    /// Checks that this mapping has no field outside `known`: a misspelt field would
    /// otherwise change what a policy means without a word.
    pub(crate) fn only(&self, known: &[&str], what: &str) {
        for (k, v) in self.entries() {
            if !known.contains(&k.as_str()) {
                self.child(self.join(k), Some(v)).error(format!(
                    "unknown field for {what}; known fields are {}",
                    known.join(", ")
                ));
            }
        }
    }

    fn join(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The items of this list, or `None` if it is missing or null; an error if it is set and
    /// is something else.
    pub(crate) fn list(&self) -> Option<Vec<Field<'a>>> {
        match self.value()? {
            Value::Seq(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| self.child(format!("{}[{i}]", self.path), Some(n)))
                    .collect(),
            ),
            _ => {
                self.wrong_type("a list");
                None
            }
        }
    }

    /// The items of this list; empty when it is missing.
    pub(crate) fn items(&self) -> Vec<Field<'a>> {
        self.list().unwrap_or_default()
    }

    /// This string; an error if it is set and is something else.
    pub(crate) fn str(&self) -> Option<&'a str> {
        match self.value()? {
            Value::Str(s) => Some(s),
            _ => {
                self.wrong_type("a string");
                None
            }
        }
    }

    /// This string; an error if it is missing.
    pub(crate) fn required_str(&self) -> Option<&'a str> {
        if !self.is_set() {
            self.error("is required");
            return None;
        }
        self.str()
    }

    /// This boolean; an error if it is set and is something else.
    pub(crate) fn bool(&self) -> Option<bool> {
        match self.value()? {
            Value::Bool(b) => Some(*b),
            _ => {
                self.wrong_type("true or false");
                None
            }
        }
    }

    /// This integer as a port number (1 to 65535).
    pub(crate) fn port_number(&self) -> Option<u16> {
        match self.value()? {
            Value::Int(i) => self.check_port(*i),
            _ => {
                self.wrong_type("a port number");
                None
            }
        }
    }

    fn check_port(&self, i: i64) -> Option<u16> {
        match u16::try_from(i) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.error(format!("{i} is not a port number (1 to 65535)"));
                None
            }
        }
    }

    /// A port that may be a number or a name; `quoted_numbers` accepts `"80"` as 80 (as
    /// CiliumNetworkPolicy writes ports), otherwise a quoted number is an invalid name.
    pub(crate) fn port_ref(&self, quoted_numbers: bool) -> Option<PortRef> {
        match self.value()? {
            Value::Int(i) => self.check_port(*i).map(PortRef::Number),
            Value::Str(s) if quoted_numbers && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse::<i64>()
                .ok()
                .and_then(|i| self.check_port(i))
                .map(PortRef::Number),
            Value::Str(s) if crate::ports::is_valid_port_name(s) => Some(PortRef::Name(s.clone())),
            Value::Str(s) => {
                self.error(format!(
                    "{s:?} is neither a port number nor a port name (at most 15 lower-case \
                     letters, digits and '-', with at least one letter)"
                ));
                None
            }
            _ => {
                self.wrong_type("a port number or name");
                None
            }
        }
    }

    /// A protocol, `TCP` when missing.
    pub(crate) fn protocol(&self) -> Protocol {
        match self.str() {
            None => Protocol::Tcp,
            Some(s) => match s {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                other => {
                    self.error(format!("{other:?} is not a protocol: use TCP, UDP or SCTP"));
                    Protocol::Tcp
                }
            },
        }
    }

    /// A mapping of strings to strings (labels, annotations, selectors).
    pub(crate) fn string_map(&self) -> Labels {
        let mut out = Labels::new();
        for (k, v) in self.entries() {
            let field = self.child(self.join(k), Some(v));
            match &v.value {
                Value::Str(s) => {
                    out.insert(k.clone(), s.clone());
                }
                Value::Null => {
                    out.insert(k.clone(), String::new());
                }
                Value::Bool(b) => field.error(not_quoted(&v.value, b)),
                Value::Int(i) => field.error(not_quoted(&v.value, i)),
                Value::Float(f) => field.error(not_quoted(&v.value, f)),
                other => field.error(format!("must be a string, not {}", other.type_name())),
            }
        }
        out
    }

    /// The items of a list of strings.
    pub(crate) fn strings(&self) -> Vec<(Field<'a>, &'a str)> {
        self.items()
            .into_iter()
            .filter_map(|f| f.str().map(|s| (f, s)))
            .collect()
    }
}

/// What to say of a scalar written where a string belongs: quote it.
fn not_quoted(value: &Value, text: &dyn std::fmt::Display) -> String {
    format!(
        "must be a string, not {}: quote it, \"{text}\"",
        value.type_name()
    )
}
