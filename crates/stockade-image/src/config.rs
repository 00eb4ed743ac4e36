//! The parts of an image's configuration (OCI image-spec `config`, the same
//! in Docker's) that a sandbox honours, and the rest kept for `inspect`.

use serde::{Deserialize, Serialize};

/// `config` of an image configuration blob. Field names as the spec
/// writes them; unknown fields are ignored (the whole blob stays in the
/// store for `image inspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
}

/// An image configuration blob (`application/vnd.oci.image.config.v1+json`
/// or Docker's `container.image.v1+json`): what the store reads of it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigBlob {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default)]
    pub config: Option<ImageConfig>,
    pub rootfs: RootFs,
}

/// `rootfs` of a configuration: the uncompressed digests of the layers,
/// bottom first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<crate::Digest>,
}
