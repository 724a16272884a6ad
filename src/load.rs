//! Reading manifest files and folders for the offline commands, or the cluster itself
//! from the Kubernetes API (`--cluster`).

use std::path::PathBuf;

use anyhow::bail;
use palisade_policy::cluster::Cluster;
use palisade_policy::manifest::Report;

/// A cluster read from manifests, with what was wrong in them.
pub struct Loaded {
    /// The objects that loaded, with missing namespaces and pod addresses filled in.
    pub cluster: Cluster,
    /// Invalid objects and skipped kinds.
    pub report: Report,
}

impl Loaded {
    /// Prints every notice and error to standard error.
    pub fn print_report(&self) {
        for n in &self.report.notices {
            eprintln!("{n}");
        }
        for e in &self.report.errors {
            eprintln!("{e}");
        }
    }
}

/// Reads every manifest under `paths`, as the controller's folder source does.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Loaded> {
    if paths.is_empty() {
        bail!("name at least one manifest file or folder");
    }
    for p in paths {
        if !p.exists() {
            bail!("cannot read {}: no such file or folder", p.display());
        }
    }
    let (cluster, report) = palisade_controller::folder::load(paths);
    Ok(Loaded { cluster, report })
}

/// Reads the cluster from the Kubernetes API once (the kubeconfig, or the pod's
/// ServiceAccount, as the controller finds them), by the same code as manifests.
pub fn load_cluster() -> anyhow::Result<Loaded> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cluster, report) = runtime.block_on(async {
        let client = palisade_controller::kubernetes::client().await?;
        palisade_controller::kubernetes::load_cluster(&client)
            .await
            .map_err(anyhow::Error::from)
    })?;
    Ok(Loaded { cluster, report })
}
