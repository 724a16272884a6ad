//! `palisade rollout`: from audit to enforce, one namespace at a time. `status` lists the
//! flows the namespace's proxies let through only because of audit mode (grouped by
//! workload, port and policy), each with the smallest NetworkPolicy that would allow it,
//! and exits 0 when there is none (ready to enforce), 1 otherwise. `enforce` and `audit`
//! set the namespace's `palisade.dev/mode` annotation: on the cluster (a patch), or in the
//! manifest folder the controller reads (the Namespace's file edited in place, the rest of
//! it byte for byte).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use palisade_policy::cluster::{Cluster, MODE_ANNOTATION};
use palisade_policy::document::{parse_stream, Node, Value};
use palisade_policy::flows::{Filter, FlowRecord};
use palisade_policy::generate::allow;
use palisade_policy::policy::Direction;
use palisade_policy::ports::Protocol;
use palisade_policy::simulate::{SideVerdict, SimFlow};
use palisade_policy::verdict::Action;
use serde::Serialize;

use crate::flows::{collect, Ask, Reach};
use crate::load::{load, load_cluster};

/// `palisade rollout` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Whether NAMESPACE is ready to enforce: the flows its proxies would deny, each with
    /// the smallest NetworkPolicy that allows it; exit 0 ready, 1 not ready, 2 error.
    Status(StatusArgs),
    /// Enforce NAMESPACE's policies (annotation palisade.dev/mode=enforce).
    Enforce(ModeArgs),
    /// Only audit NAMESPACE (palisade.dev/mode=audit): would-deny flows pass, logged.
    Audit(ModeArgs),
}

/// Arguments of `rollout status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The namespace.
    namespace: String,
    #[command(flatten)]
    reach: Reach,
    /// The manifests (pods, namespaces, policies) the suggestions are written for; with
    /// --lab, the lab's; without either, the cluster as the Kubernetes API holds it.
    paths: Vec<PathBuf>,
    /// The window: flows received this long ago at most.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    since: Duration,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    output: crate::flows::Output,
}

/// Arguments of `rollout enforce` and `rollout audit`.
#[derive(clap::Args)]
pub struct ModeArgs {
    /// The namespace.
    namespace: String,
    /// A lab kept up with `palisade lab --keep` (its work folder): its manifests change.
    #[arg(long, value_name = "DIR", conflicts_with = "source")]
    lab: Option<PathBuf>,
    /// The manifest files or folders the controller reads (`controller --source`): the
    /// Namespace's file changes; without --source or --lab, the cluster's Namespace.
    #[arg(long)]
    source: Vec<PathBuf>,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status(args) => status(args),
        Command::Enforce(args) => set_mode(args, "enforce"),
        Command::Audit(args) => set_mode(args, "audit"),
    }
}

/// A would-deny flow group: who to whom on which port, how often, and which sides' policies
/// would deny it.
#[derive(Debug, Serialize)]
struct Pending {
    source: String,
    destination: String,
    port: u16,
    protocol: Protocol,
    count: u64,
    /// `egress` of the source, `ingress` of the destination, or both.
    sides: Vec<Direction>,
    policies: Vec<String>,
    /// `namespace/name` of a source and a destination pod seen, when they are pods.
    from: Option<String>,
    to: Option<String>,
    /// The smallest NetworkPolicies that allow it.
    suggestion: Vec<serde_json::Value>,
}

fn end(e: Option<&palisade_policy::flows::Endpoint>, addr: std::net::SocketAddr) -> String {
    e.map_or_else(
        || addr.ip().to_string(),
        |e| format!("{}/{}", e.namespace, e.workload),
    )
}

/// Groups the would-deny records of `namespace`'s proxies by source and destination
/// workload, port and protocol.
fn pending(records: &[FlowRecord], namespace: &str) -> Vec<Pending> {
    let mut groups: BTreeMap<(String, String, u16, Protocol), Pending> = BTreeMap::new();
    for r in records {
        let judged_here = r.pod.split_once('/').is_some_and(|(ns, _)| ns == namespace);
        if r.action != Action::WouldDeny || !judged_here {
            continue;
        }
        let (source, destination) = (
            end(r.source.as_ref(), r.src),
            end(r.destination.as_ref(), r.dst),
        );
        let key = (
            source.clone(),
            destination.clone(),
            r.dst.port(),
            r.protocol,
        );
        let g = groups.entry(key).or_insert_with(|| Pending {
            source,
            destination,
            port: r.dst.port(),
            protocol: r.protocol,
            count: 0,
            sides: Vec::new(),
            policies: Vec::new(),
            from: r.source.as_ref().map(|e| e.key()),
            to: r.destination.as_ref().map(|e| e.key()),
            suggestion: Vec::new(),
        });
        g.count += r.count;
        if !g.sides.contains(&r.direction) {
            g.sides.push(r.direction);
        }
        for p in &r.policies {
            if !g.policies.contains(p) {
                g.policies.push(p.clone());
            }
        }
    }
    groups.into_values().collect()
}

/// The flow `allow` is asked about: the sides that would deny it refuse.
fn sim_flow(p: &Pending, from: &str, to: &str) -> SimFlow {
    let side = |d: Direction| {
        let refuses = p.sides.contains(&d);
        SideVerdict {
            allowed: true,
            isolated: refuses,
            policies: if refuses {
                p.policies.clone()
            } else {
                Vec::new()
            },
            action: Some(if refuses {
                Action::WouldDeny
            } else {
                Action::Allow
            }),
            http: false,
        }
    };
    SimFlow {
        from: from.to_owned(),
        to: to.to_owned(),
        port: p.port,
        protocol: p.protocol,
        family: Default::default(),
        allowed: true,
        egress: side(Direction::Egress),
        ingress: side(Direction::Ingress),
    }
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let lab = args.reach.lab()?;
    let paths = match (&lab, args.paths.is_empty()) {
        (Some(lab), true) => vec![lab.manifests.clone()],
        _ => args.paths.clone(),
    };
    let ask = Ask {
        filter: Filter {
            namespace: Some(args.namespace.clone()),
            verdict: Some("would-deny".into()),
            ..Filter::default()
        },
        since: Some(args.since),
        follow: false,
    };
    let records = collect(&args.reach, &ask)?;
    let mut groups = pending(&records, &args.namespace);
    // The suggestions are written for the manifests named, else for the cluster as the API
    // holds it (read only when something would be denied).
    let cluster: Option<Cluster> = match (paths.is_empty(), groups.is_empty()) {
        (_, true) => None,
        (false, false) => Some(load(&paths)?.cluster),
        (true, false) => match load_cluster() {
            Ok(loaded) => Some(loaded.cluster),
            Err(e) => {
                eprintln!("no suggested policies: {e:#}");
                None
            }
        },
    };
    for g in &mut groups {
        if let (Some(cluster), Some(from), Some(to)) = (&cluster, &g.from, &g.to) {
            g.suggestion = allow(cluster, &sim_flow(g, from, to));
        }
    }
    let ready = groups.is_empty();
    let since = humantime::format_duration(args.since);
    match args.output {
        crate::flows::Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "namespace": args.namespace,
                "ready": ready,
                "since": since.to_string(),
                "flows": groups,
            }))?
        ),
        crate::flows::Output::Text => {
            if ready {
                println!(
                    "namespace {}: ready to enforce: no flow would have been denied in the last {since}",
                    args.namespace
                );
            } else {
                println!(
                    "namespace {}: NOT ready to enforce: {} flows would be denied (seen in the last {since}):",
                    args.namespace,
                    groups.len()
                );
            }
            for g in &groups {
                let sides: Vec<&str> = g
                    .sides
                    .iter()
                    .map(|d| match d {
                        Direction::Egress => "egress of the source",
                        Direction::Ingress => "ingress of the destination",
                    })
                    .collect();
                println!(
                    "\n  {} -> {} {}/{}: {} flows, would be denied by {} ({})",
                    g.source,
                    g.destination,
                    g.port,
                    g.protocol.as_str(),
                    g.count,
                    sides.join(" and "),
                    g.policies.join(", ")
                );
                if !g.suggestion.is_empty() {
                    println!("  the smallest change that allows it:\n");
                    for line in palisade_policy::document::to_yaml(&g.suggestion).lines() {
                        println!("    {line}");
                    }
                } else if cluster.is_none() {
                    println!(
                        "  (no suggested policy: the cluster could not be read; name the manifests)"
                    );
                } else {
                    println!("  (not between two pods of the cluster: allow it with an ipBlock)");
                }
            }
        }
    }
    Ok(if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn set_mode(args: ModeArgs, mode: &str) -> anyhow::Result<ExitCode> {
    let folder = match (&args.lab, args.source.is_empty()) {
        (Some(dir), _) => vec![palisade::lab::LabState::read(dir)?.manifests],
        (None, false) => args.source.clone(),
        (None, true) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let before = runtime.block_on(async {
                let client = palisade_controller::kubernetes::client().await?;
                palisade_controller::kubernetes::set_namespace_mode(client, &args.namespace, mode)
                    .await
                    .map_err(anyhow::Error::from)
            })?;
            println!(
                "namespace {}: {MODE_ANNOTATION}={mode} (was {})",
                args.namespace,
                before.as_deref().unwrap_or("unset")
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    let mut files = Vec::new();
    for p in &folder {
        files.extend(
            palisade_controller::folder::manifest_files(p)
                .with_context(|| format!("cannot read {}", p.display()))?,
        );
    }
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        if let Some((new, before)) = with_mode(&text, &args.namespace, mode)
            .with_context(|| format!("{}: Namespace {}", file.display(), args.namespace))?
        {
            write_in_place(&file, &new)?;
            println!(
                "namespace {}: {MODE_ANNOTATION}={mode} (was {}) in {}",
                args.namespace,
                before.as_deref().unwrap_or("unset"),
                file.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    bail!(
        "no Namespace {} in {}: add one (kind: Namespace) to set its mode",
        args.namespace,
        folder
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Replaces `file` with `text` at once (a reader sees the old or the new file, never half).
fn write_in_place(file: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = file.with_extension("palisade-tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))
}

fn indent(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

/// `text` with Namespace `namespace`'s mode annotation set to `mode`, every other byte
/// kept, and the mode it had; `None` when `text` holds no such Namespace. Only block-style
/// YAML is edited: anything else is an error that says to edit it by hand.
fn with_mode(
    text: &str,
    namespace: &str,
    mode: &str,
) -> anyhow::Result<Option<(String, Option<String>)>> {
    let found = parse_stream(text).into_iter().find_map(|d| {
        let root = d.root.ok()??;
        let meta = root.get("metadata")?.clone();
        (root.get_str("kind") == Some("Namespace") && meta.get_str("name") == Some(namespace))
            .then_some(meta)
    });
    let Some(meta) = found else {
        return Ok(None);
    };
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    let line_of = |n: &Node| -> anyhow::Result<usize> {
        let i = (n.line as usize)
            .checked_sub(1)
            .filter(|i| *i < lines.len());
        i.context("cannot place the annotation (edit the file by hand)")
    };
    let eol = |l: &str| if l.ends_with("\r\n") { "\r\n" } else { "\n" }.to_owned();
    let annotations = meta.get("annotations");
    let mode_node = annotations.and_then(|a| a.get(MODE_ANNOTATION));
    let before = mode_node.and_then(|n| match &n.value {
        Value::Str(s) => Some(s.clone()),
        _ => None,
    });
    match (annotations, mode_node) {
        (_, Some(node)) => {
            let i = line_of(node)?;
            let line = &lines[i];
            let Some(colon) = line
                .find(&format!("{MODE_ANNOTATION}\":"))
                .map(|at| at + MODE_ANNOTATION.len() + 2)
                .or_else(|| {
                    line.find(&format!("{MODE_ANNOTATION}:"))
                        .map(|at| at + MODE_ANNOTATION.len() + 1)
                })
            else {
                bail!(
                    "{MODE_ANNOTATION} is not written as `key: value` on one line; edit it by hand"
                );
            };
            let end = eol(line);
            lines[i] = format!("{} {mode}{end}", &line[..colon]);
        }
        (
            Some(Node {
                value: Value::Map(entries),
                ..
            }),
            None,
        ) if !entries.is_empty() => {
            let i = line_of(&entries[0].1)?;
            let pad = indent(&lines[i]).to_owned();
            if lines[i].trim_start().starts_with('{') || !lines[i].contains(':') {
                bail!("metadata.annotations is not a block mapping; edit it by hand");
            }
            let end = eol(&lines[i]);
            lines.insert(i, format!("{pad}{MODE_ANNOTATION}: {mode}{end}"));
        }
        (Some(_), None) => {
            bail!("metadata.annotations is empty or not a block mapping; edit it by hand")
        }
        (None, None) => {
            let name = meta.get("name").context("metadata has no name line")?;
            let i = line_of(name)?;
            let pad = indent(&lines[i]).to_owned();
            if pad.is_empty() {
                bail!("metadata is not a block mapping; edit it by hand");
            }
            let end = eol(&lines[i]);
            lines.insert(
                i,
                format!("{pad}annotations:{end}{pad}{pad}{MODE_ANNOTATION}: {mode}{end}"),
            );
        }
    }
    Ok(Some((lines.concat(), before)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the shop\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop   # ours\n  labels:\n    team: a\n---\nkind: Pod\n";

    #[test]
    fn the_mode_is_added_changed_and_everything_else_kept() {
        let (added, before) = with_mode(FILE, "shop", "audit").unwrap().unwrap();
        assert_eq!(before, None);
        assert_eq!(
            added,
            FILE.replace(
                "  name: shop",
                "  annotations:\n    palisade.dev/mode: audit\n  name: shop"
            )
        );
        let (enforced, before) = with_mode(&added, "shop", "enforce").unwrap().unwrap();
        assert_eq!(before.as_deref(), Some("audit"));
        assert_eq!(enforced, added.replace("mode: audit", "mode: enforce"));
        // Another annotation already there: the mode joins it.
        let other = FILE.replace("  labels:", "  annotations:\n    owner: me\n  labels:");
        let (joined, _) = with_mode(&other, "shop", "enforce").unwrap().unwrap();
        assert_eq!(
            joined,
            other.replace(
                "    owner: me",
                "    palisade.dev/mode: enforce\n    owner: me"
            )
        );
        assert!(with_mode(FILE, "absent", "audit").unwrap().is_none());
        let flow = FILE.replace("  labels:", "  annotations: {}\n  labels:");
        assert!(with_mode(&flow, "shop", "audit")
            .unwrap_err()
            .to_string()
            .contains("by hand"));
    }

    #[test]
    fn would_deny_records_of_the_namespace_are_grouped_by_workload_and_side() {
        use palisade_policy::flows::Endpoint;
        let ep = |ns: &str, pod: &str, w: &str| Endpoint {
            namespace: ns.into(),
            pod: pod.into(),
            workload: w.into(),
        };
        let record = |pod: &str, dir: Direction, action: Action, from: Endpoint| FlowRecord {
            time: "t".into(),
            pod: pod.into(),
            direction: dir,
            action,
            protocol: Protocol::Tcp,
            src: "10.0.0.1:0".parse().unwrap(),
            dst: "10.0.0.2:5432".parse().unwrap(),
            service: None,
            reason: "no-rule-matched".into(),
            policies: vec!["data/deny".into()],
            http: None,
            count: 2,
            source: Some(from),
            destination: Some(ep("data", "db-0", "db")),
            name: None,
        };
        let records = [
            record(
                "data/db-0",
                Direction::Ingress,
                Action::WouldDeny,
                ep("shop", "web-1", "web"),
            ),
            record(
                "data/db-0",
                Direction::Ingress,
                Action::WouldDeny,
                ep("shop", "web-2", "web"),
            ),
            record(
                "data/db-0",
                Direction::Ingress,
                Action::Allow,
                ep("shop", "api-1", "api"),
            ),
            // Judged by another namespace's proxy: enforcing `data` does not change it.
            record(
                "shop/web-1",
                Direction::Egress,
                Action::WouldDeny,
                ep("shop", "web-1", "web"),
            ),
        ];
        let groups = pending(&records, "data");
        assert_eq!(groups.len(), 1, "{groups:#?}");
        let g = &groups[0];
        assert_eq!(
            (g.source.as_str(), g.destination.as_str()),
            ("shop/web", "data/db")
        );
        assert_eq!((g.count, g.port), (4, 5432));
        assert_eq!(g.sides, vec![Direction::Ingress]);
        let f = sim_flow(g, "shop/web-1", "data/db-0");
        assert_eq!(f.ingress.action, Some(Action::WouldDeny));
        assert_eq!(f.egress.action, Some(Action::Allow));
    }
}
