//! The CustomResourceDefinitions, rendered as YAML.

use std::{fs, path::Path};

use kube::CustomResourceExt;

use crate::api::{ModelRelease, SecurePipeline};

/// (file name, YAML) of each CRD, in a stable order.
pub fn rendered() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    let crds = [SecurePipeline::crd(), ModelRelease::crd()];
    crds.iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((format!("{name}.yaml"), serde_yaml::to_string(crd)?))
        })
        .collect()
}

/// Writes every CRD into `dir`, one file each.
pub fn write_all(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    for (file, yaml) in rendered()? {
        fs::write(dir.join(file), yaml)?;
    }
    Ok(())
}

/// Every CRD as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, serde_yaml::Error> {
    Ok(rendered()?
        .into_iter()
        .map(|(_, y)| format!("---\n{y}"))
        .collect())
}
