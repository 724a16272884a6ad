//! `palisade diff OLD NEW` on two versions of the three-tier example: exactly the flows whose
//! verdict changed, checked against two `simulate` runs, as JSON, lists and matrices, from
//! folders and from git revisions.

mod cli;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use cli::{flow_key as key, json, palisade_in as palisade, root, TempDir};
use serde_json::Value;

/// The three-tier example with its policies replaced by the version under review, in `dir`.
fn three_tier_v2(dir: &Path) {
    for file in ["namespaces.yaml", "pods.yaml"] {
        std::fs::copy(
            root().join("examples/three-tier").join(file),
            dir.join(file),
        )
        .unwrap();
    }
    std::fs::copy(
        root().join("tests/diff-input/three-tier-policies-v2.yaml"),
        dir.join("policies.yaml"),
    )
    .unwrap();
}

/// The flows `simulate` allows in `path`.
fn allowed(path: &Path) -> BTreeSet<String> {
    let sim = json(&palisade(
        root(),
        &["simulate", "-o", "json", path.to_str().unwrap()],
    ));
    sim["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["allowed"] == true)
        .map(key)
        .collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(key).collect()
}

#[test]
fn exactly_the_flows_that_changed() {
    let v2 = TempDir::new("diff-v2");
    three_tier_v2(&v2.0);
    let old = root().join("examples/three-tier");
    let out = palisade(
        root(),
        &[
            "diff",
            "examples/three-tier",
            v2.0.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "a change exits 1");
    let d = json(&out);

    // Two independent simulate runs: what each version allows.
    let (before, after) = (allowed(&old), allowed(&v2.0));
    let opened: BTreeSet<String> = after.difference(&before).cloned().collect();
    let closed: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(keys(&d["opened"]), opened);
    assert_eq!(keys(&d["closed"]), closed);

    // And they are the flows the change was written to open and close.
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        opened,
        set(&[
            "ingress-nginx/controller -> production/api TCP/8080",
            "production/frontend -> production/postgres TCP/5432",
        ])
    );
    assert_eq!(
        closed,
        set(&[
            "production/api -> kube-system/coredns TCP/53",
            "production/frontend -> kube-system/coredns TCP/53",
            "production/postgres -> kube-system/coredns TCP/53",
        ])
    );
    assert_eq!(d["audit"].as_array().unwrap().len(), 0);
    assert_eq!(d["added"].as_array().unwrap().len(), 0);
    assert_eq!(d["removed"].as_array().unwrap().len(), 0);
    assert_eq!(d["unchanged"], 28 - 5);

    // Each change carries the verdicts, with the policies behind them.
    let front = d["opened"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["from"] == "production/frontend")
        .unwrap();
    assert_eq!(front["before"]["action"], "deny");
    assert_eq!(front["after"]["action"], "allow");
    assert_eq!(
        front["after"]["egress"]["policies"][0],
        "production/frontend-egress"
    );
    assert_eq!(
        front["after"]["ingress"]["policies"][0],
        "production/postgres-ingress"
    );
}

#[test]
fn the_text_lists_each_change_and_marks_it_in_the_matrix() {
    let v2 = TempDir::new("diff-text");
    three_tier_v2(&v2.0);
    let out = palisade(
        root(),
        &["diff", "examples/three-tier", v2.0.to_str().unwrap()],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "2 flows opened, 3 flows closed, 0 flows changed in audit mode, 23 flows unchanged\n",
        "opened:\n  ingress-nginx/controller -> production/api 8080/TCP: allow: egress of ingress-nginx/controller not isolated; production/api-ingress (ingress)\n      was deny: ingress of production/api denies it (isolated by production/api-ingress, production/default-deny)\n",
        "closed:\n  production/api -> kube-system/coredns 53/TCP: deny: egress of production/api denies it",
        "\nTCP/5432\n",
        "production/frontend               [+]",
        "production/api                    [-]",
    ] {
        assert!(text.contains(expected), "missing:\n{expected}\nin:\n{text}");
    }
    // Ports without a change get no matrix.
    assert!(!text.contains("\nTCP/80\n"), "{text}");
}

#[test]
fn the_same_manifests_differ_in_nothing() {
    let out = palisade(
        root(),
        &["diff", "examples/three-tier", "examples/three-tier"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "no flow changed (28 flows judged the same)\n"
    );
}

#[test]
fn a_git_revision_is_read_as_it_was() {
    let repo = TempDir::new("diff-git");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(&repo.0)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let deploy = repo.0.join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    for file in ["namespaces.yaml", "pods.yaml", "policies.yaml"] {
        std::fs::copy(
            root().join("examples/three-tier").join(file),
            deploy.join(file),
        )
        .unwrap();
    }
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "base"]);
    // The working tree now holds the change under review.
    three_tier_v2(&deploy);
    let out = palisade(&repo.0, &["diff", "HEAD:deploy", "deploy", "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = json(&out);
    assert_eq!(keys(&d["opened"]).len(), 2);
    assert_eq!(keys(&d["closed"]).len(), 3);
    // An unknown revision is bad input.
    let out = palisade(&repo.0, &["diff", "no-such-rev:deploy", "deploy"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-rev"));
}
