//! The CRD YAML behind `poolgate crdgen`, and the files it writes.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::crd::{PlatformKey, UpstreamAccount};
use crate::error::Error;

/// File names `crdgen --out-dir` writes, one per CRD (`<plural>.<group>.yaml`).
pub const UPSTREAM_ACCOUNT_FILE: &str = "upstreamaccounts.poolgate.dev.yaml";
pub const PLATFORM_KEY_FILE: &str = "platformkeys.poolgate.dev.yaml";

/// Both CRDs, in file order.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        (UPSTREAM_ACCOUNT_FILE, UpstreamAccount::crd()),
        (PLATFORM_KEY_FILE, PlatformKey::crd()),
    ]
}

/// One CRD as a YAML document (without the `---` separator).
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, Error> {
    serde_yaml_ng::to_string(crd).map_err(|e| Error::Yaml(e.to_string()))
}

/// Every CRD file: its name and its content as `crdgen --out-dir` writes it.
pub fn files() -> Result<Vec<(&'static str, String)>, Error> {
    crds()
        .into_iter()
        .map(|(name, crd)| Ok((name, to_yaml(&crd)?)))
        .collect()
}

/// Both CRDs as one multi-document YAML stream, as `crdgen` prints it.
pub fn multi_document() -> Result<String, Error> {
    let mut out = String::new();
    for (_, doc) in files()? {
        out.push_str("---\n");
        out.push_str(&doc);
    }
    Ok(out)
}

/// Writes each CRD to `dir/<plural>.<group>.yaml` (creating `dir`); returns the paths.
pub fn write_dir(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
    let mut written = Vec::new();
    for (name, doc) in files()? {
        let path = dir.join(name);
        std::fs::write(&path, doc).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}
