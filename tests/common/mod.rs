//! Helpers the end-to-end tests share: reading a proxy's metrics, flow log and reported
//! flows, and waiting for a condition with a bound.

use std::process::Command;
use std::time::{Duration, Instant};

use palisade::lab::Lab;

/// A metric's value from a proxy's /metrics, summed over label sets containing `labels`.
pub fn metric(lab: &Lab, pod: &str, name: &str, labels: &[&str]) -> f64 {
    let (status, body) = lab.admin(pod, "/metrics").expect("admin server");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The first line of a pod's flow log that `matches`, waiting a little for the proxy's
/// flow log thread, which writes after the verdict.
pub fn logged(
    lab: &Lab,
    pod: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut found = None;
    eventually(Duration::from_secs(3), || {
        found = lab.flow_log(pod).into_iter().find(&matches);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no such line in {pod}'s flow log: {:?}", lab.flow_log(pod)))
}

/// Polls `check` every 20 ms until it holds or `within` passes; the time it took.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The records `palisade flows --lab DIR ARGS -o json` prints.
// Only the tests that read reported flows use it.
#[allow(dead_code)]
pub fn flows(dir: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["flows", "--lab", dir, "-o", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "palisade flows {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect()
}

/// Checks that `suggestion` (rollout status's JSON) is exactly one NetworkPolicy in
/// `namespace` letting pods `app: from` reach pods `app: to` on TCP `port`.
#[allow(dead_code)] // only the rollout tests use it
pub fn assert_suggests(
    suggestion: &serde_json::Value,
    namespace: &str,
    from: &str,
    to: &str,
    port: u16,
) {
    let suggestion = suggestion.as_array().expect("a list of policies");
    assert_eq!(
        suggestion.len(),
        1,
        "one refusing side, one policy: {suggestion:#?}"
    );
    let policy = &suggestion[0];
    assert_eq!(policy["kind"], "NetworkPolicy");
    assert_eq!(policy["metadata"]["namespace"], namespace);
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        serde_json::json!({"app": to})
    );
    let rule = &policy["spec"]["ingress"][0];
    assert_eq!(
        rule["from"][0]["podSelector"]["matchLabels"],
        serde_json::json!({"app": from})
    );
    assert_eq!(rule["ports"][0]["port"], port);
}
