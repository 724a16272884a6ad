//! Running the palisade binary from the tests of its offline commands: the repository's
//! folder, the command's output, temporary folders, and flows named as people read them.
// Each test crate uses part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository's folder, where `examples/` and `tests/` are.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `palisade ARGS...` in `dir`.
pub fn palisade_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run palisade")
}

/// Runs `palisade ARGS...` in the repository's folder.
pub fn palisade(args: &[&str]) -> Output {
    palisade_in(root(), args)
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

/// Standard output as JSON.
pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// `from -> to PROTO/port` for a flow (or a change) in JSON.
pub fn flow_key(f: &Value) -> String {
    format!(
        "{} -> {} {}/{}",
        f["from"].as_str().unwrap(),
        f["to"].as_str().unwrap(),
        f["protocol"].as_str().unwrap(),
        f["port"]
    )
}

/// A folder of its own under the system's temporary folder, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty folder named after `name` and this process.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("palisade-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary folder");
        Self(dir)
    }

    /// The path of `file` in the folder, as an argument.
    pub fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
