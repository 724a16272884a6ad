//! `palisade lint`: the policy crate's findings on a set of manifests, or on the cluster
//! read from the Kubernetes API (`--cluster`), as text, JSON or SARIF, with an exit code by
//! severity.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use palisade_policy::lint::{lint, sarif, Check, Finding, Severity};

use crate::load::{load, load_cluster};
use crate::EXIT_BAD_INPUT;

/// How to print the findings.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Output {
    /// One paragraph per finding, for people.
    #[default]
    Text,
    /// `{"findings": [...], "summary": {...}}`, for scripts.
    Json,
    /// A SARIF 2.1.0 log, for code scanning.
    Sarif,
}

/// Arguments of `palisade lint`.
#[derive(clap::Args)]
pub struct Args {
    /// Manifest files or folders (YAML or JSON, read recursively).
    #[arg(required_unless_present = "cluster", conflicts_with = "cluster")]
    paths: Vec<PathBuf>,
    /// Lint the cluster as the Kubernetes API holds it now (kubeconfig or in-cluster
    /// ServiceAccount) instead of manifests: findings name the object and field.
    #[arg(long)]
    cluster: bool,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    output: Output,
    /// Leave out the findings of a check (repeatable), e.g. --skip redundant-rule.
    #[arg(long, value_name = "CHECK", value_parser = parse_check)]
    skip: Vec<Check>,
}

fn parse_check(s: &str) -> Result<Check, String> {
    Check::from_id(s).ok_or_else(|| {
        let ids: Vec<&str> = Check::ALL.iter().map(|c| c.id()).collect();
        format!("{s:?} is not a check; the checks are: {}", ids.join(", "))
    })
}

/// Exit code when the worst finding is a warning.
const EXIT_WARNINGS: u8 = 1;
/// Exit code when there is at least one error.
const EXIT_ERRORS: u8 = 3;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = if args.cluster {
        load_cluster()?
    } else {
        load(&args.paths)?
    };
    for n in &loaded.report.notices {
        eprintln!("{n}");
    }
    let findings: Vec<Finding> = loaded
        .report
        .errors
        .iter()
        .map(Finding::invalid)
        .chain(lint(&loaded.cluster))
        .filter(|f| !args.skip.contains(&f.check))
        .collect();
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings, notes) = (
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Note),
    );
    match args.output {
        Output::Text => {
            // Why a check matters is said once, at its first finding.
            let mut explained = Vec::new();
            for f in &findings {
                let first = !explained.contains(&f.check);
                explained.push(f.check);
                print!("{}", render(f, first));
            }
            let pods = loaded.cluster.pods.len();
            let policies = loaded.cluster.policies.len();
            println!(
                "{} in {policies} policies and {pods} pods",
                summary(errors, warnings, notes)
            );
            if pods == 0 {
                println!(
                    "note: the {} no pods, so the checks about the pods policies select and \
                     reach had nothing to look at",
                    if args.cluster {
                        "cluster has"
                    } else {
                        "manifests hold"
                    }
                );
            }
        }
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "findings": findings,
                "summary": {"errors": errors, "warnings": warnings, "notes": notes},
            }))?
        ),
        Output::Sarif => println!(
            "{}",
            serde_json::to_string_pretty(&sarif::log(&findings, env!("CARGO_PKG_VERSION")))?
        ),
    }
    Ok(ExitCode::from(if loaded.report.has_errors() {
        EXIT_BAD_INPUT
    } else if errors > 0 {
        EXIT_ERRORS
    } else if warnings > 0 {
        EXIT_WARNINGS
    } else {
        0
    }))
}

fn plural(n: usize, one: &str) -> String {
    match n {
        1 => format!("1 {one}"),
        n => format!("{n} {one}s"),
    }
}

fn summary(errors: usize, warnings: usize, notes: usize) -> String {
    if errors + warnings + notes == 0 {
        return "no findings".into();
    }
    [
        plural(errors, "error"),
        plural(warnings, "warning"),
        plural(notes, "note"),
    ]
    .join(", ")
}

/// One finding as a paragraph: `file:line: severity[check] object field`, then what, why
/// (when `why` is set) and the fix (its further lines indented under it).
pub fn render(f: &Finding, why: bool) -> String {
    let mut out = String::new();
    let place = match (f.file.is_empty(), f.line) {
        (true, _) => String::new(),
        (false, 0) => format!("{}: ", f.file),
        (false, line) => format!("{}:{line}: ", f.file),
    };
    let _ = writeln!(
        out,
        "{place}{}[{}] {} {}",
        f.severity, f.check, f.object, f.field
    );
    let _ = writeln!(out, "  {}", f.message);
    if why {
        let _ = writeln!(out, "  why: {}", f.why);
    }
    let mut fix = f.fix.lines();
    let _ = writeln!(out, "  fix: {}", fix.next().unwrap_or_default());
    for line in fix {
        let _ = writeln!(out, "       {line}");
    }
    out.push('\n');
    out
}
