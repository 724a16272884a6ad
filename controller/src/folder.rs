//! The folder source: manifests in files and folders, read again whenever they change.
//! An object that turns invalid keeps its last valid version in force (with a notice), so a
//! typo in one policy never lifts or changes what is enforced.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use palisade_policy::cluster::Cluster;
use palisade_policy::manifest::{read_str, Notice, Object, ObjectError, Read, Report};

/// The manifest files under `path`: the file itself, or every `.yaml`, `.yml` and `.json`
/// file of a folder and its subfolders (hidden ones left out), sorted.
pub fn manifest_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    if std::fs::metadata(path)?.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What a file looked like, to notice changes without reading it.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// Reads manifests from paths, remembering each object's last valid version.
#[derive(Default)]
pub struct FolderSource {
    paths: Vec<PathBuf>,
    /// Each valid object by `Kind namespace/name`, with the file it came from.
    last_good: BTreeMap<String, (String, Object)>,
    fingerprint: Option<Fingerprint>,
}

impl FolderSource {
    /// A source over these files and folders.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            paths,
            ..Self::default()
        }
    }

    fn files(&self, report: &mut Report) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for path in &self.paths {
            match manifest_files(path) {
                Ok(f) => files.extend(f),
                Err(e) => report.errors.push(ObjectError {
                    file: path.display().to_string(),
                    line: 0,
                    what: None,
                    path: String::new(),
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        files
    }

    /// Whether the files changed since the last read (always true before the first).
    pub fn changed(&mut self) -> bool {
        let fingerprint: Fingerprint = self
            .files(&mut Report::default())
            .into_iter()
            .map(|f| {
                let meta = std::fs::metadata(&f).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                let len = meta.map_or(0, |m| m.len());
                (f, modified, len)
            })
            .collect();
        let changed = self.fingerprint.as_ref() != Some(&fingerprint);
        self.fingerprint = Some(fingerprint);
        changed
    }

    /// Reads every file. Objects that are invalid now but were valid before keep their
    /// last valid version; so do the objects of a file that cannot be read or parsed.
    pub fn read(&mut self) -> (Cluster, Report) {
        let mut report = Report::default();
        let mut good: BTreeMap<String, (String, Object)> = BTreeMap::new();
        let keep = |what: &str,
                    file: &str,
                    report: &mut Report,
                    good: &mut BTreeMap<String, (String, Object)>| {
            if let Some(prev) = self.last_good.get(what) {
                if !good.contains_key(what) {
                    report.notices.push(Notice {
                        file: file.to_owned(),
                        line: 0,
                        message: format!("keeping the last valid version of {what} in force"),
                    });
                    good.insert(what.to_owned(), prev.clone());
                }
            }
        };
        for file in self.files(&mut report) {
            let name = file.display().to_string();
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    report.errors.push(ObjectError {
                        file: name.clone(),
                        line: 0,
                        what: None,
                        path: String::new(),
                        message: format!("cannot read: {e}"),
                    });
                    String::new()
                }
            };
            let entries = read_str(&text);
            let unreadable = text.is_empty()
                && std::fs::metadata(&file).map_or(true, |m| m.len() > 0)
                || entries.iter().any(|e| matches!(e.read, Read::Syntax(_)));
            for entry in entries {
                report.record(&name, &entry);
                match entry.read {
                    Read::Object { what, object } => {
                        good.insert(what, (name.clone(), object.in_file(&name)));
                    }
                    Read::Invalid { what, .. } => keep(&what, &name, &mut report, &mut good),
                    Read::Skipped { .. } | Read::Syntax(_) => {}
                }
            }
            if unreadable {
                // Objects of this file that could not be read this time stay as they were.
                let from_file: Vec<String> = self
                    .last_good
                    .iter()
                    .filter(|(_, (f, _))| *f == name)
                    .map(|(w, _)| w.clone())
                    .collect();
                for what in from_file {
                    keep(&what, &name, &mut report, &mut good);
                }
            }
        }
        let mut cluster = Cluster::default();
        for (_, object) in good.values() {
            cluster.add(object.clone());
        }
        cluster.finish();
        cluster.assign_missing_ips();
        self.last_good = good;
        (cluster, report)
    }
}

/// Reads manifests once, as the offline commands do.
pub fn load(paths: &[PathBuf]) -> (Cluster, Report) {
    FolderSource::new(paths.to_vec()).read()
}
