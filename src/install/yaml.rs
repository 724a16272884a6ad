//! JSON objects printed as a YAML stream for `kubectl apply -f -`, through saphyr's
//! emitter (which quotes strings that YAML 1.1 readers, kubectl's among them, would take
//! for booleans or numbers).

use std::borrow::Cow;

use saphyr::{Mapping, Scalar, Yaml, YamlEmitter};
use serde_json::Value;

fn to_yaml(v: &Value) -> Yaml<'static> {
    match v {
        Value::Null => Yaml::Value(Scalar::Null),
        Value::Bool(b) => Yaml::Value(Scalar::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Value(Scalar::Integer(i)),
            None => Yaml::Value(Scalar::FloatingPoint(n.as_f64().unwrap_or_default().into())),
        },
        Value::String(s) => Yaml::Value(Scalar::String(Cow::Owned(s.clone()))),
        Value::Array(a) => Yaml::Sequence(a.iter().map(to_yaml).collect()),
        Value::Object(o) => {
            let mut m = Mapping::new();
            for (k, v) in o {
                m.insert(
                    Yaml::Value(Scalar::String(Cow::Owned(k.clone()))),
                    to_yaml(v),
                );
            }
            Yaml::Mapping(m)
        }
    }
}

/// The objects as YAML documents, each starting with `---`.
pub fn documents(objects: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for o in objects {
        YamlEmitter::new(&mut out).dump(&to_yaml(o))?;
        out.push('\n');
    }
    Ok(out)
}
