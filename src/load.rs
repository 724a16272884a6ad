//! Reading manifest files and folders into a cluster.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use palisade_policy::cluster::Cluster;
use palisade_policy::manifest::{load_str, Report};

/// A cluster read from manifests, with what was wrong in them.
pub struct Loaded {
    /// The objects that loaded, with missing namespaces and pod addresses filled in.
    pub cluster: Cluster,
    /// Invalid objects and skipped kinds.
    pub report: Report,
}

impl Loaded {
    /// Prints every error and notice to standard error.
    pub fn print_report(&self) {
        for n in &self.report.notices {
            eprintln!("{n}");
        }
        for e in &self.report.errors {
            eprintln!("{e}");
        }
    }
}

/// Whether a file in a folder is a manifest, by its extension.
fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The manifest files under `path`: the file itself, or every `.yaml`, `.yml` and `.json`
/// file of a folder and its subfolders (hidden ones left out), sorted.
pub fn manifest_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let p = entry?.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else if is_manifest(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every manifest under `paths`.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Loaded> {
    if paths.is_empty() {
        bail!("name at least one manifest file or folder");
    }
    let mut cluster = Cluster::default();
    let mut report = Report::default();
    for path in paths {
        for file in manifest_files(path)? {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            load_str(&mut cluster, &file.display().to_string(), &text, &mut report);
        }
    }
    cluster.finish();
    cluster.assign_missing_ips();
    Ok(Loaded { cluster, report })
}
