//! A parsed manifest document: a tree of values, each remembering its source line, so that
//! an error can name the line of the field it is about.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// A value and the line (1-based; 0 when unknown) it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the value starts.
    pub line: u32,
    /// The value.
    pub value: Value,
}

/// A YAML or JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A list.
    Seq(Vec<Node>),
    /// A mapping, in document order.
    Map(Vec<(String, Node)>),
}

impl Value {
    /// How an error message names the type of this value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The value under `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string under `key`, if there is one.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Node {
                value: Value::Str(s),
                ..
            }) => Some(s),
            _ => None,
        }
    }

    /// Builds a tree from JSON (as the Kubernetes API serves objects); lines are unknown.
    pub fn from_json(v: &serde_json::Value) -> Node {
        let value = match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(a) => Value::Seq(a.iter().map(Node::from_json).collect()),
            serde_json::Value::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Node::from_json(v)))
                    .collect(),
            ),
        };
        Node { line: 0, value }
    }
}

/// A document that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// The line of the error.
    pub line: u32,
    /// What is wrong.
    pub message: String,
}

/// One document of a stream: its first line, and its tree or why it has none.
#[derive(Debug)]
pub struct Document {
    /// The line the document starts on.
    pub line: u32,
    /// The parsed tree; `None` for an empty document.
    pub root: Result<Option<Node>, SyntaxError>,
}

/// Splits a YAML stream on `---` lines, as kubectl does, and parses each document on its
/// own, so that a syntax error in one document does not hide the others.
pub fn parse_stream(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut start = 0usize; // byte offset of the current document
    let mut start_line = 1u32;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") {
            docs.push(parse_one(&text[start..offset], start_line));
            start = offset + line.len();
            start_line = i as u32 + 2;
            // `--- {inline: doc}` keeps its content on the separator line.
            if let Some(rest) = bare.strip_prefix("---") {
                if !rest.trim().is_empty() && !rest.trim_start().starts_with('#') {
                    start = offset + 3;
                    start_line = i as u32 + 1;
                }
            }
        }
        offset += line.len();
    }
    docs.push(parse_one(&text[start..], start_line));
    docs.retain(|d| !matches!(d.root, Ok(None)));
    docs
}

fn parse_one(text: &str, first_line: u32) -> Document {
    let shift = first_line - 1;
    let root = match MarkedYaml::load_from_str(text) {
        Err(e) => Err(SyntaxError {
            line: e.marker().line() as u32 + shift,
            message: format!(
                "{} (in the document that starts at line {first_line})",
                e.info()
            ),
        }),
        Ok(docs) => match docs.into_iter().next() {
            None => Ok(None),
            Some(doc) => convert(&doc, shift).map(|n| match n.value {
                Value::Null => None,
                _ => Some(n),
            }),
        },
    };
    let line = match &root {
        Ok(Some(n)) => n.line,
        _ => first_line,
    };
    Document { line, root }
}

fn convert(y: &MarkedYaml<'_>, shift: u32) -> Result<Node, SyntaxError> {
    let line = y.span.start.line() as u32 + shift;
    let value = match &y.data {
        YamlData::Value(s) => scalar(s),
        YamlData::Sequence(items) => Value::Seq(
            items
                .iter()
                .map(|i| convert(i, shift))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut out = Vec::with_capacity(map.len());
            for (k, v) in map {
                let key = match convert(k, shift)?.value {
                    Value::Str(s) => s,
                    Value::Int(i) => i.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Null => String::new(),
                    other => {
                        return Err(SyntaxError {
                            line,
                            message: format!(
                                "a mapping key must be a string, not {}",
                                other.type_name()
                            ),
                        })
                    }
                };
                out.push((key, convert(v, shift)?));
            }
            Value::Map(out)
        }
        YamlData::Tagged(_, inner) => return convert(inner, shift),
        YamlData::Representation(s, _, _) => Value::Str(s.to_string()),
        YamlData::Alias(_) => {
            return Err(SyntaxError {
                line,
                message: "YAML aliases (*name) are not supported; write the value out".into(),
            })
        }
        YamlData::BadValue => {
            return Err(SyntaxError {
                line,
                message: "a value does not fit its tag".into(),
            })
        }
    };
    Ok(Node { line, value })
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Int(*i),
        Scalar::FloatingPoint(f) => Value::Float(f.into_inner()),
        Scalar::String(s) => Value::Str(s.to_string()),
    }
}

/// Keys in the order Kubernetes manifests are written in; others follow, sorted.
const KEY_ORDER: [&str; 15] = [
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "spec",
    "namespaceSelector",
    "podSelector",
    "policyTypes",
    "ingress",
    "egress",
    "from",
    "to",
    "protocol",
    "port",
];

/// Writes JSON values as one YAML stream, a document each, as `kubectl apply -f` reads it,
/// with keys in the order people write manifests in.
pub fn to_yaml(docs: &[serde_json::Value]) -> String {
    fn convert(v: &serde_json::Value) -> saphyr::Yaml<'static> {
        use saphyr::{Mapping, Yaml};
        match v {
            serde_json::Value::Null => Yaml::Value(Scalar::Null),
            serde_json::Value::Bool(b) => Yaml::Value(Scalar::Boolean(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Value(Scalar::Integer(i)),
                None => Yaml::Value(Scalar::String(n.to_string().into())),
            },
            serde_json::Value::String(s) => Yaml::Value(Scalar::String(s.clone().into())),
            serde_json::Value::Array(items) => Yaml::Sequence(items.iter().map(convert).collect()),
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                let rank = |k: &str| KEY_ORDER.iter().position(|o| *o == k).unwrap_or(usize::MAX);
                entries.sort_by(|a, b| (rank(a.0), a.0).cmp(&(rank(b.0), b.0)));
                let mut out = Mapping::new();
                for (k, v) in entries {
                    out.insert(Yaml::Value(Scalar::String(k.clone().into())), convert(v));
                }
                Yaml::Mapping(out)
            }
        }
    }
    let mut out = String::new();
    for doc in docs {
        let mut emitter = saphyr::YamlEmitter::new(&mut out);
        // Writing into a String cannot fail.
        let _ = emitter.dump(&convert(doc));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_lines() {
        let text = "a: 1\n---\n# comment\nkind: Pod\nmetadata:\n  name: x\n---\n---\n";
        let docs = parse_stream(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 1);
        let pod = docs[1].root.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(pod.line, 4);
        assert_eq!(pod.get("metadata").unwrap().get("name").unwrap().line, 6);
        assert_eq!(pod.get("metadata").unwrap().get_str("name"), Some("x"));
    }

    #[test]
    fn a_syntax_error_does_not_hide_other_documents() {
        let text = "kind: A\n---\nkind: [unclosed\n---\nkind: B\n";
        let docs = parse_stream(text);
        assert_eq!(docs.len(), 3);
        assert!(docs[0].root.is_ok());
        let err = docs[1].root.as_ref().unwrap_err();
        assert!(err.line >= 3, "{err:?}");
        assert_eq!(
            docs[2]
                .root
                .as_ref()
                .unwrap()
                .as_ref()
                .unwrap()
                .get_str("kind"),
            Some("B")
        );
    }

    #[test]
    fn written_yaml_reads_back_the_same() {
        let doc = serde_json::json!({
            "kind": "NetworkPolicy",
            "metadata": {"name": "p", "labels": {"flag": "true", "n": "80", "star": "*"}},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "empty": {}, "list": []},
        });
        let text = to_yaml(&[doc.clone(), doc]);
        let docs = parse_stream(&text);
        assert_eq!(docs.len(), 2, "{text}");
        let root = docs[1].root.as_ref().unwrap().as_ref().unwrap();
        let labels = root.get("metadata").unwrap().get("labels").unwrap();
        // Strings that look like other types stay strings.
        assert_eq!(labels.get_str("flag"), Some("true"), "{text}");
        assert_eq!(labels.get_str("n"), Some("80"), "{text}");
        assert_eq!(labels.get_str("star"), Some("*"), "{text}");
        let port = &root.get("spec").unwrap().get("ports").unwrap();
        let Value::Seq(ports) = &port.value else {
            panic!("a list: {text}")
        };
        assert_eq!(ports[0].get("port").unwrap().value, Value::Int(80));
    }

    #[test]
    fn json_reads_into_the_same_tree_as_yaml() {
        let yaml = "kind: Pod\nmetadata: {labels: {a: \"1\"}, name: x}\nspec: {ports: [80, 2.5, true, null]}\n";
        let from_yaml = parse_stream(yaml).remove(0).root.unwrap().unwrap();
        let json: serde_json::Value = serde_json::from_str(
            r#"{"kind": "Pod", "metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"ports": [80, 2.5, true, null]}}"#,
        )
        .unwrap();
        fn strip(n: &Node) -> Node {
            let value = match &n.value {
                Value::Seq(items) => Value::Seq(items.iter().map(strip).collect()),
                Value::Map(m) => Value::Map(m.iter().map(|(k, v)| (k.clone(), strip(v))).collect()),
                other => other.clone(),
            };
            Node { line: 0, value }
        }
        assert_eq!(Node::from_json(&json), strip(&from_yaml));
        // Numbers too large for i64 stay numbers.
        let big: serde_json::Value = serde_json::from_str("18446744073709551615").unwrap();
        assert!(matches!(Node::from_json(&big).value, Value::Float(_)));
    }

    #[test]
    fn quoted_numbers_stay_strings() {
        let docs = parse_stream("a: 80\nb: \"80\"\n");
        let root = docs[0].root.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(root.get("a").unwrap().value, Value::Int(80));
        assert_eq!(root.get("b").unwrap().value, Value::Str("80".into()));
    }
}
