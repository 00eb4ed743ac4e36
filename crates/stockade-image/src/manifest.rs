//! Manifests and indexes: OCI image manifest and index, Docker v2
//! schema 2 manifest and manifest list (the same JSON shapes under other
//! media types). Schema 1 and anything else is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::pull::PullError;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Layer media types a pull accepts (the store unpacks these).
pub const LAYER_TYPES: &[&str] = &[
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    DOCKER_LAYER_GZIP,
    // Docker's uncompressed spelling, rare but legal.
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// The `Accept` header of a manifest request: every type we read.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (the OCI distribution spec asks
/// registries to accept at least 4 MiB; no sane manifest comes close).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<IndexPlatform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `platform` of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(Index),
}

fn malformed(what: &str, reason: impl Into<String>) -> PullError {
    PullError::Malformed {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// Parses a manifest or index. Its kind comes from its own `mediaType`,
/// else from `content_type` (the registry's `Content-Type`, or the
/// descriptor that pointed at it), else from its shape (`manifests` → an
/// index, `config` → an image manifest; OCI lets `mediaType` be absent).
/// `what` names it in errors.
pub fn parse(bytes: &[u8], content_type: Option<&str>, what: &str) -> Result<Manifest, PullError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(what, format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| malformed(what, "not a JSON object"))?;
    let schema = obj.get("schemaVersion").and_then(|v| v.as_u64());
    if schema == Some(1) {
        return Err(PullError::MediaType(DOCKER_SCHEMA1.to_string()));
    }
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| c.starts_with("application/vnd."));
    let media = obj.get("mediaType").and_then(|v| v.as_str()).or(header);
    let is_index = match media {
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(other @ (DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)) => {
            return Err(PullError::MediaType(other.to_string()))
        }
        Some(other) => return Err(PullError::MediaType(other.to_string())),
        None if obj.contains_key("manifests") => true,
        None if obj.contains_key("config") => false,
        None => {
            return Err(malformed(
                what,
                "neither an image manifest nor an index (no mediaType, config or manifests)",
            ))
        }
    };
    if schema != Some(2) {
        return Err(malformed(
            what,
            format!("schemaVersion is {schema:?}, expected 2"),
        ));
    }
    if is_index {
        let idx: Index =
            serde_json::from_value(value).map_err(|e| malformed(what, e.to_string()))?;
        Ok(Manifest::Index(idx))
    } else {
        let m: ImageManifest =
            serde_json::from_value(value).map_err(|e| malformed(what, e.to_string()))?;
        check_image_manifest(&m)?;
        Ok(Manifest::Image(m))
    }
}

/// Refuses what is not a container image (artifacts, foreign layers)
/// before anything is downloaded.
fn check_image_manifest(m: &ImageManifest) -> Result<(), PullError> {
    let config_type = m.config.media_type.as_str();
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        return Err(PullError::MediaType(config_type.to_string()));
    }
    for layer in &m.layers {
        if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
            return Err(PullError::MediaType(layer.media_type.clone()));
        }
    }
    Ok(())
}

/// Checks that `bytes` are what `want` names: the digest of a manifest is
/// the sha256 of its bytes exactly as received.
pub fn verify(bytes: &[u8], want: &Digest, what: &str) -> Result<(), PullError> {
    let got = Digest::of(bytes);
    if &got != want {
        return Err(PullError::DigestMismatch {
            what: what.to_string(),
            expected: want.clone(),
            actual: got,
        });
    }
    Ok(())
}

/// The media type of a layer file whose type nobody told us (a
/// `docker save` archive), from its first bytes.
pub fn sniff_layer_type(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        OCI_LAYER_GZIP
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        OCI_LAYER_ZSTD
    } else {
        OCI_LAYER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    fn image_json(media: Option<&str>, config_type: &str, layer_type: &str) -> String {
        let mt = media.map_or(String::new(), |m| format!(r#""mediaType":"{m}","#));
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"{config_type}","digest":"{}","size":10}},
               "layers":[{{"mediaType":"{layer_type}","digest":"{}","size":20}}]}}"#,
            d(1),
            d(2)
        )
    }

    #[test]
    fn reads_oci_and_docker_manifests() {
        for media in [Some(OCI_MANIFEST), Some(DOCKER_MANIFEST), None] {
            let json = image_json(media, OCI_CONFIG, OCI_LAYER_GZIP);
            let Manifest::Image(m) = parse(json.as_bytes(), None, "m").unwrap() else {
                panic!("not an image manifest: {media:?}");
            };
            assert_eq!(m.config.digest.to_string(), d(1));
            assert_eq!(m.layers[0].size, 20);
        }
        let json = image_json(None, DOCKER_CONFIG, DOCKER_LAYER_GZIP);
        assert!(matches!(
            parse(
                json.as_bytes(),
                Some(&format!("{DOCKER_MANIFEST}; charset=utf-8")),
                "m"
            ),
            Ok(Manifest::Image(_))
        ));
    }

    #[test]
    fn reads_indexes_and_manifest_lists() {
        for media in [OCI_INDEX, DOCKER_LIST] {
            let json = format!(
                r#"{{"schemaVersion":2,"mediaType":"{media}","manifests":[
                  {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,
                    "platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
                d(3)
            );
            let Manifest::Index(i) = parse(json.as_bytes(), None, "i").unwrap() else {
                panic!("not an index");
            };
            assert_eq!(i.manifests[0].platform.as_ref().unwrap().os, "linux");
        }
        // An OCI layout's index.json has no mediaType.
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,
               "annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#,
            d(4)
        );
        assert!(matches!(
            parse(json.as_bytes(), Some("application/json"), "index.json"),
            Ok(Manifest::Index(_))
        ));
    }

    #[test]
    fn refuses_schema1_and_unknown_types() {
        let s1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(
            parse(s1.as_bytes(), None, "m"),
            Err(PullError::MediaType(t)) if t.contains("manifest.v1")
        ));
        let odd = image_json(
            Some("application/vnd.example.thing+json"),
            OCI_CONFIG,
            OCI_LAYER,
        );
        assert!(matches!(
            parse(odd.as_bytes(), None, "m"),
            Err(PullError::MediaType(t)) if t == "application/vnd.example.thing+json"
        ));
        // A helm chart: an OCI manifest whose config is not an image config.
        let helm = image_json(
            Some(OCI_MANIFEST),
            "application/vnd.cncf.helm.config.v1+json",
            OCI_LAYER,
        );
        assert!(matches!(
            parse(helm.as_bytes(), None, "m"),
            Err(PullError::MediaType(t)) if t.contains("helm")
        ));
        let foreign = image_json(
            None,
            DOCKER_CONFIG,
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        );
        assert!(matches!(
            parse(foreign.as_bytes(), None, "m"),
            Err(PullError::MediaType(t)) if t.contains("foreign")
        ));
        for bad in [
            "[]",
            "not json",
            r#"{"schemaVersion":2}"#,
            r#"{"schemaVersion":3,"config":{}}"#,
        ] {
            assert!(
                matches!(
                    parse(bad.as_bytes(), None, "m"),
                    Err(PullError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn manifest_digest_mismatch_is_rejected() {
        let bytes = image_json(None, OCI_CONFIG, OCI_LAYER);
        verify(bytes.as_bytes(), &Digest::of(bytes.as_bytes()), "m").unwrap();
        let mut tampered = bytes.clone().into_bytes();
        tampered.push(b' ');
        let e = verify(&tampered, &Digest::of(bytes.as_bytes()), "m").unwrap_err();
        assert!(matches!(e, PullError::DigestMismatch { .. }), "{e}");
    }

    #[test]
    fn sniffs_layer_compression() {
        assert_eq!(sniff_layer_type(&[0x1f, 0x8b, 8]), OCI_LAYER_GZIP);
        assert_eq!(sniff_layer_type(&[0x28, 0xb5, 0x2f, 0xfd]), OCI_LAYER_ZSTD);
        assert_eq!(sniff_layer_type(b"etc/\0\0\0"), OCI_LAYER);
    }
}
