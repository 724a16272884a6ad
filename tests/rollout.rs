//! From audit to enforce, end to end in a lab: proxies report their flows to the
//! controller, `palisade flows` reads and follows them, `rollout status` names the flow a
//! namespace in audit mode is missing a rule for and suggests the policy, and applying it
//! then `rollout enforce` keeps every expected flow working while the rest is refused.
//! Needs root (scripts/test installs what the lab needs).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{eventually, flows, logged, metric};
use palisade::lab::{Lab, LabOptions};
use palisade_policy::ports::Protocol;
use serde_json::{json, Value};

const BINARY: &str = env!("CARGO_BIN_EXE_palisade");
/// A generous ceiling for what happens in the background (reports, policy pushes).
const WAIT: Duration = Duration::from_secs(15);

fn lab() -> Lab {
    Lab::start(LabOptions {
        paths: vec![PathBuf::from("tests/lab/rollout")],
        respect_injection: false,
        binary: PathBuf::from(BINARY),
        hold: Duration::from_secs(2),
        log_allowed: false,
        dns_grace: Duration::from_secs(60),
    })
    .expect("building the lab (needs root)")
}

/// Runs the CLI; its exit code, standard output and standard error.
fn palisade(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BINARY).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ends(r: &Value) -> (String, String) {
    let key = |e: &Value| {
        format!(
            "{}/{}",
            e["namespace"].as_str().unwrap_or("?"),
            e["pod"].as_str().unwrap_or("?")
        )
    };
    (key(&r["source"]), key(&r["destination"]))
}

/// Whether a TCP connection from one pod to another's port goes through.
fn probe(lab: &Lab, from: &str, to: &str, port: u16) -> bool {
    lab.probe(from, to, port, Protocol::Tcp).unwrap()
}

fn workdir(lab: &Lab) -> &str {
    lab.workdir().to_str().unwrap()
}

/// The lab's copy of the manifest file holding Namespace shop.
fn namespace_file(manifests: &Path) -> PathBuf {
    manifests.join("0").join("cluster.yaml")
}

#[test]
fn rollout_status_names_the_missing_flow_and_enforcing_with_its_suggestion_keeps_every_expected_flow(
) {
    let lab = lab();
    let dir = workdir(&lab);
    // The application's flows: web -> api (allowed by a rule) and api -> db (no rule: it
    // passes only because shop is in audit mode, and the proxy says so).
    assert!(probe(&lab, "shop/web-1", "shop/api-1", 80));
    assert!(probe(&lab, "shop/api-1", "shop/db-0", 5432));
    let line = logged(&lab, "shop/db-0", |l| l["direction"] == "ingress");
    assert_eq!(line["action"], "would-deny");

    // The controller has the would-deny record (reports go in the background).
    assert!(
        eventually(WAIT, || !flows(dir, &["--verdict", "would-deny"])
            .is_empty())
        .is_some(),
        "the would-deny flow reaches the controller"
    );
    let (code, out, err) = palisade(&["rollout", "status", "shop", "--lab", dir, "-o", "json"]);
    assert_eq!(code, 1, "not ready: {out}{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["ready"], false);
    let pending = status["flows"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "exactly the missing flow: {pending:#?}");
    let p = &pending[0];
    assert_eq!(p["source"], "shop/api");
    assert_eq!(p["destination"], "shop/db");
    assert_eq!(p["port"], 5432);
    assert_eq!(p["protocol"], "TCP");
    assert_eq!(p["sides"], json!(["ingress"]));
    assert_eq!(p["policies"], json!(["shop/default-deny"]));
    let suggestion = p["suggestion"].clone();
    common::assert_suggests(&suggestion, "shop", "api", "db", 5432);
    // In words, with the YAML to apply.
    let (code, text, _) = palisade(&["rollout", "status", "shop", "--lab", dir]);
    assert_eq!(code, 1);
    assert!(text.contains("NOT ready to enforce"), "{text}");
    assert!(text.contains("shop/api -> shop/db 5432/TCP"), "{text}");
    assert!(text.contains("kind: NetworkPolicy"), "{text}");
    // Another namespace, where nothing would be denied, is ready.
    let (code, text, _) = palisade(&["rollout", "status", "other", "--lab", dir]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ready to enforce"), "{text}");

    // Apply the suggestion, then enforce: the Namespace's file changes in that one line.
    let list = json!({"apiVersion": "v1", "kind": "List", "items": suggestion});
    lab.write_manifest("zz-suggested.json", &list.to_string())
        .unwrap();
    let file = namespace_file(lab.manifests());
    let before = std::fs::read_to_string(&file).unwrap();
    let (code, out, err) = palisade(&["rollout", "enforce", "shop", "--lab", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("palisade.dev/mode=enforce (was audit)"),
        "{out}"
    );
    let after = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        after,
        before.replace("palisade.dev/mode: audit", "palisade.dev/mode: enforce"),
        "only the mode changed, byte for byte"
    );

    // Enforced: web -> db, never allowed, is now refused (the proxy says why)...
    assert!(
        eventually(WAIT, || !probe(&lab, "shop/web-1", "shop/db-0", 5432)).is_some(),
        "enforce mode reaches db's proxy"
    );
    let refused = logged(&lab, "shop/db-0", |l| {
        l["action"] == "deny"
            && l["src"]
                .as_str()
                .is_some_and(|s| s.starts_with("10.66.0.1:"))
    });
    assert_eq!(refused["reason"], "no-rule-matched");
    // ...and every expected flow still works, as do the refusals around them.
    for (from, to, port, expected) in [
        ("shop/web-1", "shop/api-1", 80, true),
        ("shop/api-1", "shop/db-0", 5432, true),
        ("shop/db-0", "shop/api-1", 80, false),
        ("shop/api-1", "shop/web-1", 80, false),
        ("shop/web-1", "shop/db-0", 5432, false),
    ] {
        assert_eq!(
            probe(&lab, from, to, port),
            expected,
            "{from} -> {to}:{port}"
        );
    }

    // And back to audit.
    let (code, out, err) = palisade(&["rollout", "audit", "shop", "--lab", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("palisade.dev/mode=audit (was enforce)"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
}

/// Kills the follower when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn flows_filter_and_follow_against_a_kept_lab() {
    let lab = lab();
    let dir = workdir(&lab);
    assert!(probe(&lab, "shop/web-1", "shop/api-1", 80));
    assert!(probe(&lab, "shop/web-1", "shop/db-0", 5432));
    // Allowed flows arrive as counts (once a second), refused ones one by one.
    let mut all = Vec::new();
    assert!(
        eventually(WAIT, || {
            all = flows(dir, &[]);
            all.iter()
                .any(|r| r["action"] == "allow" && r["dst"] == "10.66.0.2:80")
                && all.iter().any(|r| r["action"] == "would-deny")
        })
        .is_some(),
        "both flows reach the controller: {all:#?}"
    );
    let allowed = flows(dir, &["--verdict", "allow", "--port", "80"]);
    assert!(!allowed.is_empty());
    for r in &allowed {
        assert_eq!(
            (r["action"].as_str(), r["dst"].as_str()),
            (Some("allow"), Some("10.66.0.2:80"))
        );
    }
    assert!(allowed
        .iter()
        .any(|r| ends(r) == ("shop/web-1".into(), "shop/api-1".into())));
    let denied = flows(dir, &["--verdict", "denied", "--pod", "shop/db-0"]);
    assert!(!denied.is_empty());
    for r in &denied {
        assert_eq!(r["action"], "would-deny");
        assert_eq!(ends(r), ("shop/web-1".into(), "shop/db-0".into()));
        assert_eq!(r["policies"], json!(["shop/default-deny"]));
        assert_eq!(r["pod"], "shop/db-0", "judged by db's proxy");
    }
    assert!(flows(dir, &["--policy", "api-from-web", "--verdict", "denied"]).is_empty());
    assert!(flows(dir, &["--namespace", "elsewhere"]).is_empty());
    assert!(flows(dir, &["--port", "5432", "--verdict", "allow"])
        .iter()
        .all(|r| r["dst"] != "10.66.0.3:5432"));
    assert!(
        metric(
            &lab,
            "shop/db-0",
            "palisade_flow_batches_total",
            &["result=\"sent\""]
        ) >= 1.0,
        "the proxy counts the batches it sent"
    );
    let (code, text, _) = palisade(&[
        "flows",
        "--lab",
        dir,
        "--summary",
        "--verdict",
        "would-deny",
    ]);
    assert_eq!(code, 0);
    assert!(
        text.contains("shop/web -> shop/db 5432/TCP WOULD-DENY"),
        "{text}"
    );

    // --follow: a new refused flow shows within a second.
    let mut child = Child(
        Command::new(BINARY)
            .args([
                "flows",
                "--lab",
                dir,
                "--follow",
                "--verdict",
                "denied",
                "-o",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    // The window's records come first: the follower is connected once one arrives.
    rx.recv_timeout(WAIT)
        .expect("the follower prints the window's records");
    while rx.try_recv().is_ok() {}
    assert!(probe(&lab, "shop/db-0", "shop/web-1", 80));
    let probed = Instant::now();
    let shown = loop {
        let left = Duration::from_secs(1).saturating_sub(probed.elapsed());
        match rx.recv_timeout(left) {
            Ok(r) if ends(&r) == ("shop/db-0".into(), "shop/web-1".into()) => break r,
            Ok(_) => continue,
            Err(_) => panic!("no denied flow db-0 -> web-1 within a second of the probe"),
        }
    };
    assert_eq!(shown["action"], "would-deny");
    assert_eq!(shown["dst"], "10.66.0.1:80");
}
