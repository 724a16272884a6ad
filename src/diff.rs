//! `palisade diff OLD NEW`: the flows a change to the manifests opens and closes, as lists
//! with the policies behind each verdict, matrices, or JSON. OLD and NEW are files, folders,
//! or `REV:PATH` to read a path as git revision REV has it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};
use palisade::matrix::{render, Cell, Output};
use palisade_policy::cluster::{Cluster, Pod};
use palisade_policy::compiled::PodPolicy;
use palisade_policy::diff::{diff_clusters, FlowChange, FlowDiff, Verdicts};
use palisade_policy::simulate::{compile_all, pair_where, SideVerdict, SimFlow};

use crate::load::{load, Loaded};
use crate::EXIT_BAD_INPUT;

/// Above this many pods, the matrices show only the pods a change involves.
const MATRIX_PODS: usize = 20;

/// Arguments of `palisade diff`.
#[derive(clap::Args)]
pub struct Args {
    /// The manifests before the change: a file, a folder, or REV:PATH (PATH from the
    /// repository's root as git revision REV has it, e.g. origin/main:deploy).
    old: String,
    /// The manifests after the change, in the same forms.
    new: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
}

/// Manifests read from git into a folder of their own, removed when dropped.
struct Checkout(PathBuf);

impl Drop for Checkout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn git(args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("git")
        .args(args)
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Where to read `arg` from: itself when it exists, else the manifests of `REV:PATH`
/// written out from git.
fn locate(arg: &str, which: &str) -> anyhow::Result<(PathBuf, Option<Checkout>)> {
    if Path::new(arg).exists() {
        return Ok((arg.into(), None));
    }
    let Some((rev, path)) = arg.split_once(':') else {
        bail!("cannot read {arg}: no such file or folder (name a file, a folder or REV:PATH)");
    };
    let path = if path.is_empty() { "." } else { path };
    let dir = std::env::temp_dir().join(format!("palisade-diff-{}-{which}", std::process::id()));
    let checkout = Checkout(dir.clone());
    let listing = git(&[
        "ls-tree",
        "-r",
        "-z",
        "--full-tree",
        "--name-only",
        rev,
        "--",
        path,
    ])?;
    let mut count = 0;
    for file in listing.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = String::from_utf8_lossy(file);
        if !matches!(
            Path::new(file.as_ref())
                .extension()
                .and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            continue;
        }
        let text = git(&["show", &format!("{rev}:{file}")])?;
        let dest = dir.join(file.as_ref());
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&dest, text)?;
        count += 1;
    }
    if count == 0 {
        bail!("{arg}: git revision {rev} has no YAML or JSON files under {path}");
    }
    Ok((dir, Some(checkout)))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (old_path, _old_checkout) = locate(&args.old, "old")?;
    let (new_path, _new_checkout) = locate(&args.new, "new")?;
    let old = load(&[old_path])?;
    let new = load(&[new_path])?;
    old.print_report();
    new.print_report();
    let d = diff_clusters(&old.cluster, &new.cluster);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&d)?),
        Output::Table => print!("{}", report(&d, &new)),
    }
    Ok(ExitCode::from(
        if old.report.has_errors() || new.report.has_errors() {
            EXIT_BAD_INPUT
        } else if d.is_empty() {
            0
        } else {
            1
        },
    ))
}

/// `production/api-in (ingress)` for the side's policies, or why it has none.
fn side_words(direction: &str, pod: &str, s: &SideVerdict) -> String {
    match (s.isolated, s.policies.is_empty()) {
        (false, true) => format!("{direction} of {pod} not isolated"),
        _ => format!("{} ({direction})", s.policies.join(", ")),
    }
}

/// Why a flow is now what it is.
fn why(c: &FlowChange, v: &Verdicts) -> String {
    if v.action.passes() {
        let sides = [
            side_words("egress", &c.from, &v.egress),
            side_words("ingress", &c.to, &v.ingress),
        ];
        format!("{}: {}", v.action.as_str(), sides.join("; "))
    } else {
        let mut sides = Vec::new();
        for (direction, pod, s) in [
            ("egress", &c.from, &v.egress),
            ("ingress", &c.to, &v.ingress),
        ] {
            if !s.allowed {
                sides.push(format!(
                    "{direction} of {pod} denies it (isolated by {})",
                    s.policies.join(", ")
                ));
            }
        }
        format!("deny: {}", sides.join("; "))
    }
}

fn list(out: &mut String, title: &str, changes: &[FlowChange]) {
    if changes.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title}:");
    for c in changes {
        let _ = writeln!(
            out,
            "  {} -> {} {}/{}: {}",
            c.from,
            c.to,
            c.port,
            c.protocol,
            why(c, &c.after)
        );
        let _ = writeln!(out, "      was {}", why(c, &c.before));
    }
    out.push('\n');
}

/// The lists, then one matrix per port and protocol that has a change.
fn report(d: &FlowDiff, new: &Loaded) -> String {
    let mut out = String::new();
    if d.is_empty() {
        let _ = writeln!(
            out,
            "no flow changed ({} judged the same)",
            plural(d.unchanged)
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{} opened, {} closed, {} changed in audit mode, {} unchanged\n",
        plural(d.opened.len()),
        plural(d.closed.len()),
        plural(d.audit.len()),
        plural(d.unchanged)
    );
    list(&mut out, "opened", &d.opened);
    list(&mut out, "closed", &d.closed);
    list(
        &mut out,
        "audit (passing either way; enforcing changes their fate)",
        &d.audit,
    );
    for (title, flows) in [("only in NEW", &d.added), ("only in OLD", &d.removed)] {
        if !flows.is_empty() {
            let allowed = flows.iter().filter(|f| f.allowed).count();
            let _ = writeln!(
                out,
                "{} of pods or ports {title} ({allowed} allowed)\n",
                plural(flows.len())
            );
        }
    }
    // The matrices of the ports with a change, every cell shown for context.
    let key =
        |from: &str, to: &str, protocol, port| (from.to_owned(), to.to_owned(), protocol, port);
    let mut changed: BTreeMap<_, Cell> = BTreeMap::new();
    for (changes, cell) in [
        (&d.opened, Cell::Opened),
        (&d.closed, Cell::Closed),
        (&d.audit, Cell::AuditChanged),
    ] {
        for c in changes {
            changed.insert(key(&c.from, &c.to, c.protocol, c.port), cell);
        }
    }
    if changed.is_empty() {
        return out;
    }
    let tables: BTreeSet<_> = changed
        .keys()
        .map(|(_, _, proto, port)| (*proto, *port))
        .collect();
    // A large cluster's matrices keep only the pods a change involves. Verdicts come from
    // the whole cluster's policies all the same.
    let involved: BTreeSet<&str> = changed
        .keys()
        .flat_map(|(from, to, _, _)| [from.as_str(), to.as_str()])
        .collect();
    let mut shown: Cluster = new.cluster.clone();
    if shown.pods.len() > MATRIX_PODS {
        shown.pods.retain(|p| involved.contains(p.key().as_str()));
    }
    let policies = compile_all(&new.cluster);
    let keep = |proto, port| tables.contains(&(proto, port));
    let pods: Vec<(&Pod, &PodPolicy)> = new
        .cluster
        .pods
        .iter()
        .zip(policies.iter().map(|p| &**p))
        .filter(|(p, _)| shown.pod(&p.namespace, &p.name).is_some())
        .collect();
    let mut flows = Vec::new();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i != j {
                flows.extend(pair_where(*from, *to, &keep));
            }
        }
    }
    let cells: Vec<(&SimFlow, Cell)> = flows
        .iter()
        .map(|f| {
            let cell = changed
                .get(&key(&f.from, &f.to, f.protocol, f.port))
                .copied()
                .unwrap_or_else(|| Cell::of(f));
            (f, cell)
        })
        .collect();
    out.push_str(
        "[+] opened   [-] closed   [~] audit verdict changed   unchanged: . allowed   X denied   \
         A audit   - same pod\n",
    );
    out.push_str(&render(&shown, &cells));
    out
}

fn plural(n: usize) -> String {
    match n {
        1 => "1 flow".into(),
        n => format!("{n} flows"),
    }
}
