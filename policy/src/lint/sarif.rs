//! Findings as a SARIF 2.1.0 log, the format code-scanning services (GitHub, GitLab,
//! Azure DevOps) read: one run, the checks as the tool's rules, one result per finding.

use serde_json::{json, Value};

use super::{Check, Finding};

/// The schema every SARIF 2.1.0 log names.
pub const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// A file path as a SARIF URI: relative paths stay relative (to the folder the tool ran
/// in, which code scanning takes as the repository root), absolute ones become `file:` URIs.
fn uri(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.replace('\\', "/").bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    match out.strip_prefix("./") {
        Some(rest) => rest.to_owned(),
        None if out.starts_with('/') => format!("file://{out}"),
        None => out,
    }
}

fn rule(check: Check) -> Value {
    json!({
        "id": check.id(),
        "name": check.id(),
        "shortDescription": {"text": check.title()},
        "fullDescription": {"text": check.why()},
        "help": {"text": check.why()},
        "defaultConfiguration": {"level": check.severity().as_str()},
    })
}

fn result(f: &Finding) -> Value {
    let index = Check::ALL
        .iter()
        .position(|c| *c == f.check)
        .unwrap_or_default();
    let logical = json!({
        "name": f.object,
        "fullyQualifiedName": format!("{} {}", f.object, f.field).trim_end(),
        "kind": "resource",
    });
    let location = if f.file.is_empty() {
        json!({"logicalLocations": [logical]})
    } else {
        json!({
            "physicalLocation": {
                "artifactLocation": {"uri": uri(&f.file)},
                // SARIF lines start at 1; an unknown line points at the file's first.
                "region": {"startLine": f.line.max(1)},
            },
            "logicalLocations": [logical],
        })
    };
    json!({
        "ruleId": f.check.id(),
        "ruleIndex": index,
        "level": f.severity.as_str(),
        "message": {"text": format!("{}: {}\nFix: {}", f.object, f.message, f.fix)},
        "locations": [location],
        // Stable across commits that move the policy, so that code scanning follows one
        // finding rather than closing and reopening it.
        "partialFingerprints": {
            "palisadeFinding/v1": format!("{}|{}|{}", f.check.id(), f.object, f.field),
        },
    })
}

/// The SARIF log of `findings`, produced by palisade `version`.
pub fn log(findings: &[Finding], version: &str) -> Value {
    json!({
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "palisade",
                "version": version,
                "rules": Check::ALL.iter().map(|c| rule(*c)).collect::<Vec<_>>(),
            }},
            "results": findings.iter().map(result).collect::<Vec<_>>(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_uris() {
        assert_eq!(uri("examples/a b/p.yaml"), "examples/a%20b/p.yaml");
        assert_eq!(uri("./p.yaml"), "p.yaml");
        assert_eq!(uri("/srv/x.yaml"), "file:///srv/x.yaml");
    }
}
