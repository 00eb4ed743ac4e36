//! Where a pull reads manifests and blobs: a registry, or a local source
//! without one.
//!
//! - `oci:DIR[:TAG]`: an OCI image layout (`oci-layout`, `index.json`,
//!   `blobs/sha256/<hex>`). `index.json`'s entries are picked by their
//!   `org.opencontainers.image.ref.name` annotation = TAG; without a TAG
//!   the only entry (several entries that all name a platform are an
//!   index, resolved to this host's platform).
//! - `oci-archive:FILE[:TAG]`: a tar of such a layout. It is read in
//!   place: one pass over the tar headers notes where each member's bytes
//!   are, and members are then read by seeking (so the archive must be an
//!   uncompressed tar, as `skopeo`, `buildah` and `docker save` write
//!   them). Nothing is extracted except into the store, through
//!   `Store::put_blob` like any blob.
//! - `docker-archive:FILE[:NAME]`: what `docker save` writes:
//!   `manifest.json` with `Config`, `RepoTags` and `Layers` (paths in the
//!   archive; symlinks between them followed). The image gets a synthetic
//!   OCI manifest built from them (config descriptor, then one layer
//!   descriptor per path, media type sniffed from the layer's first bytes);
//!   the image's digest is the sha256 of that manifest, the same for the
//!   same archive every time. An uncompressed layer's blob digest is its
//!   `rootfs.diff_ids` entry (checked by the store as it is copied); a
//!   compressed one is hashed once first.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigBlob;
use crate::digest::Digest;
use crate::manifest::{
    self, Descriptor, ImageManifest, Index, MAX_MANIFEST_BYTES, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST,
};
use crate::pull::PullError;
use crate::reference::Reference;
use crate::registry::{Blob, Client, Fetched};

/// The OCI annotation that tags an entry of a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Configs larger than this are refused.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The first thing a source names.
#[derive(Debug)]
pub enum Top {
    /// A manifest or index, to parse.
    Manifest(Fetched),
    /// Entries to choose from by platform.
    Index(Index),
}

/// Manifests and blobs by digest, from wherever the image is.
pub trait Fetch {
    /// What the source names (a registry's tag or digest; a layout's tag).
    fn top(&mut self) -> Result<Top, PullError>;
    /// The manifest `desc` points at, checked against its digest.
    fn manifest(&mut self, desc: &Descriptor) -> Result<Fetched, PullError>;
    /// The bytes of a blob (not yet checked: the store checks them).
    fn blob(&mut self, digest: &Digest) -> Result<Blob, PullError>;
    /// The image's name in messages.
    fn describe(&self) -> String;
}

/// A registry repository.
#[derive(Debug)]
pub struct RegistrySource {
    pub reference: Reference,
    pub client: Client,
}

impl Fetch for RegistrySource {
    fn top(&mut self) -> Result<Top, PullError> {
        let r = self.reference.manifest_ref();
        Ok(Top::Manifest(self.client.manifest(&self.reference, &r)?))
    }

    fn manifest(&mut self, desc: &Descriptor) -> Result<Fetched, PullError> {
        let mut f = self
            .client
            .manifest(&self.reference, &desc.digest.to_string())?;
        if f.media_type.is_none() && !desc.media_type.is_empty() {
            f.media_type = Some(desc.media_type.clone());
        }
        Ok(f)
    }

    fn blob(&mut self, digest: &Digest) -> Result<Blob, PullError> {
        self.client.blob(&self.reference, digest)
    }

    fn describe(&self) -> String {
        self.reference.canonical()
    }
}

/// Named files of a layout: a directory, or members of a tar.
trait Layout: std::fmt::Debug {
    /// A member and its size.
    fn open(&self, name: &str) -> Result<(Box<dyn Read>, u64), PullError>;
    fn exists(&self, name: &str) -> bool;
    fn path(&self) -> &Path;
}

#[derive(Debug)]
struct DirLayout {
    dir: PathBuf,
}

impl Layout for DirLayout {
    fn open(&self, name: &str) -> Result<(Box<dyn Read>, u64), PullError> {
        let path = self.dir.join(name);
        let local = |source| PullError::Local {
            path: path.clone(),
            source,
        };
        let f = File::open(&path).map_err(local)?;
        let size = f.metadata().map_err(local)?.len();
        Ok((Box::new(f), size))
    }

    fn exists(&self, name: &str) -> bool {
        self.dir.join(name).is_file()
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

/// An uncompressed tar read in place.
#[derive(Debug)]
struct TarLayout {
    file: PathBuf,
    /// Member → (offset of its data, size).
    members: HashMap<String, (u64, u64)>,
    /// Symlink or hard link member → the member it names.
    links: HashMap<String, String>,
}

/// `a/./b/../c` → `a/c`; `None` when it climbs out.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

impl TarLayout {
    fn open_archive(file: &Path) -> Result<TarLayout, PullError> {
        let local = |source| PullError::Local {
            path: file.to_path_buf(),
            source,
        };
        let mut f = File::open(file).map_err(local)?;
        let mut magic = [0u8; 4];
        let n = f.read(&mut magic).map_err(local)?;
        if magic[..n].starts_with(&[0x1f, 0x8b]) || magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(PullError::Malformed {
                what: format!("archive {}", file.display()),
                reason: "it is compressed; decompress it first (gunzip/zstd -d): archives are read in place".to_string(),
            });
        }
        f.seek(SeekFrom::Start(0)).map_err(local)?;
        let mut archive = tar::Archive::new(f);
        let mut members = HashMap::new();
        let mut links = HashMap::new();
        let bad = |e: std::io::Error| PullError::Malformed {
            what: format!("archive {}", file.display()),
            reason: format!("not a readable tar: {e}"),
        };
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let Some(name) = entry
                .path()
                .ok()
                .and_then(|p| p.to_str().map(str::to_string))
                .and_then(|p| normalize(&p))
            else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    members.insert(name, (entry.raw_file_position(), entry.size()));
                }
                tar::EntryType::Symlink => {
                    let Some(target) = entry.link_name().ok().flatten() else {
                        continue;
                    };
                    let target = target.to_string_lossy();
                    let parent = name.rsplit_once('/').map_or("", |(p, _)| p);
                    let joined = if target.starts_with('/') {
                        target.to_string()
                    } else {
                        format!("{parent}/{target}")
                    };
                    if let Some(t) = normalize(&joined) {
                        links.insert(name, t);
                    }
                }
                tar::EntryType::Link => {
                    if let Some(t) = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .and_then(|t| normalize(&t.to_string_lossy()))
                    {
                        links.insert(name, t);
                    }
                }
                _ => {}
            }
        }
        Ok(TarLayout {
            file: file.to_path_buf(),
            members,
            links,
        })
    }

    fn find(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = normalize(name)?;
        for _ in 0..16 {
            if let Some(m) = self.members.get(&name) {
                return Some(*m);
            }
            name = self.links.get(&name)?.clone();
        }
        None
    }
}

impl Layout for TarLayout {
    fn open(&self, name: &str) -> Result<(Box<dyn Read>, u64), PullError> {
        let (offset, size) = self.find(name).ok_or_else(|| PullError::Local {
            path: self.file.join(name),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such member in the archive",
            ),
        })?;
        Ok((member_reader(&self.file, offset, size)?, size))
    }

    fn exists(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn path(&self) -> &Path {
        &self.file
    }
}

fn read_small(layout: &dyn Layout, name: &str, limit: u64) -> Result<Vec<u8>, PullError> {
    let (mut r, size) = layout.open(name)?;
    if size > limit {
        return Err(PullError::Malformed {
            what: format!("{name} in {}", layout.path().display()),
            reason: format!("larger than {limit} bytes"),
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    r.read_to_end(&mut buf).map_err(|source| PullError::Local {
        path: layout.path().join(name),
        source,
    })?;
    Ok(buf)
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// An OCI image layout, in a directory or a tar.
#[derive(Debug)]
pub struct OciLayout {
    layout: Box<dyn Layout>,
    tag: Option<String>,
}

impl OciLayout {
    pub fn dir(path: &Path, tag: Option<String>) -> Result<OciLayout, PullError> {
        Self::new(
            Box::new(DirLayout {
                dir: path.to_path_buf(),
            }),
            tag,
        )
    }

    pub fn archive(path: &Path, tag: Option<String>) -> Result<OciLayout, PullError> {
        Self::new(Box::new(TarLayout::open_archive(path)?), tag)
    }

    fn new(layout: Box<dyn Layout>, tag: Option<String>) -> Result<OciLayout, PullError> {
        if !layout.exists("oci-layout") || !layout.exists("index.json") {
            return Err(PullError::Malformed {
                what: format!("OCI layout {}", layout.path().display()),
                reason: "it has no oci-layout and index.json (is it an OCI image layout? `docker save` writes docker-archive:)".to_string(),
            });
        }
        Ok(OciLayout { layout, tag })
    }
}

fn tags_of(index: &Index) -> String {
    let tags: Vec<&str> = index
        .manifests
        .iter()
        .filter_map(|d| d.annotations.as_ref()?.get(REF_NAME).map(String::as_str))
        .collect();
    if tags.is_empty() {
        "no tags".to_string()
    } else {
        tags.join(", ")
    }
}

impl Fetch for OciLayout {
    fn top(&mut self) -> Result<Top, PullError> {
        let bytes = read_small(&*self.layout, "index.json", MAX_MANIFEST_BYTES)?;
        let what = format!("{}/index.json", self.layout.path().display());
        let index = match manifest::parse(&bytes, Some(manifest::OCI_INDEX), &what)? {
            manifest::Manifest::Index(i) => i,
            manifest::Manifest::Image(_) => {
                return Err(PullError::Malformed {
                    what,
                    reason: "it is an image manifest, not an index".to_string(),
                })
            }
        };
        let mut chosen: Vec<Descriptor> = match &self.tag {
            Some(tag) => index
                .manifests
                .iter()
                .filter(|d| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)) == Some(tag))
                .cloned()
                .collect(),
            None => index.manifests.clone(),
        };
        match chosen.len() {
            0 => Err(PullError::NoTag {
                source_name: self.describe(),
                tag: self.tag.clone().unwrap_or_default(),
                available: tags_of(&index),
            }),
            1 => {
                let d = chosen.remove(0);
                Ok(Top::Manifest(self.manifest(&d)?))
            }
            _ if self.tag.is_some() || chosen.iter().all(|d| d.platform.is_some()) => {
                Ok(Top::Index(Index {
                    schema_version: 2,
                    media_type: None,
                    manifests: chosen,
                }))
            }
            n => Err(PullError::NoTag {
                source_name: self.describe(),
                tag: String::new(),
                available: format!("{n} images: {}; name one as :TAG", tags_of(&index)),
            }),
        }
    }

    fn manifest(&mut self, desc: &Descriptor) -> Result<Fetched, PullError> {
        let bytes = read_small(&*self.layout, &blob_name(&desc.digest), MAX_MANIFEST_BYTES)?;
        manifest::verify(
            &bytes,
            &desc.digest,
            &format!("manifest {} in {}", desc.digest, self.describe()),
        )?;
        Ok(Fetched {
            bytes,
            media_type: Some(desc.media_type.clone()).filter(|m| !m.is_empty()),
            digest: desc.digest.clone(),
        })
    }

    fn blob(&mut self, digest: &Digest) -> Result<Blob, PullError> {
        let (reader, size) = self.layout.open(&blob_name(digest))?;
        Ok(Blob {
            reader,
            size: Some(size),
        })
    }

    fn describe(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.layout.path().display()),
            None => self.layout.path().display().to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Where a blob of a docker archive is.
#[derive(Debug, Clone)]
enum Held {
    Bytes(Vec<u8>),
    Member(String),
}

/// A `docker save` archive.
#[derive(Debug)]
pub struct DockerArchive {
    tar: TarLayout,
    name: Option<String>,
    blobs: HashMap<Digest, (Held, u64)>,
}

impl DockerArchive {
    pub fn open(path: &Path, name: Option<String>) -> Result<DockerArchive, PullError> {
        let tar = TarLayout::open_archive(path)?;
        if !tar.exists("manifest.json") {
            return Err(PullError::Malformed {
                what: format!("docker archive {}", path.display()),
                reason: "it has no manifest.json (is it what `docker save` writes? an OCI layout is oci-archive:)".to_string(),
            });
        }
        Ok(DockerArchive {
            tar,
            name,
            blobs: HashMap::new(),
        })
    }

    fn malformed(&self, reason: impl Into<String>) -> PullError {
        PullError::Malformed {
            what: format!("docker archive {}", self.tar.file.display()),
            reason: reason.into(),
        }
    }
}

impl Fetch for DockerArchive {
    fn top(&mut self) -> Result<Top, PullError> {
        let bytes = read_small(&self.tar, "manifest.json", MAX_MANIFEST_BYTES)?;
        let entries: Vec<DockerEntry> = serde_json::from_slice(&bytes)
            .map_err(|e| self.malformed(format!("manifest.json: {e}")))?;
        let all_tags = || {
            let t: Vec<String> = entries
                .iter()
                .flat_map(|e| e.repo_tags.iter().flatten().cloned())
                .collect();
            if t.is_empty() {
                "no tags".to_string()
            } else {
                t.join(", ")
            }
        };
        let entry = match &self.name {
            Some(n) => {
                let want = Reference::parse(n)?.canonical();
                entries.iter().find(|e| {
                    e.repo_tags
                        .iter()
                        .flatten()
                        .any(|t| Reference::parse(t).is_ok_and(|r| r.canonical() == want))
                })
            }
            None if entries.len() == 1 => entries.first(),
            None => None,
        };
        let Some(entry) = entry else {
            return Err(PullError::NoTag {
                source_name: self.describe(),
                tag: self.name.clone().unwrap_or_default(),
                available: if self.name.is_none() && entries.len() > 1 {
                    format!(
                        "{} images: {}; name one as :NAME",
                        entries.len(),
                        all_tags()
                    )
                } else {
                    all_tags()
                },
            });
        };
        let config = read_small(&self.tar, &entry.config, MAX_CONFIG_BYTES)?;
        let parsed: ConfigBlob = serde_json::from_slice(&config)
            .map_err(|e| self.malformed(format!("config {}: {e}", entry.config)))?;
        if parsed.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(self.malformed(format!(
                "its config names {} layers (rootfs.diff_ids) but manifest.json lists {}",
                parsed.rootfs.diff_ids.len(),
                entry.layers.len()
            )));
        }
        let config_digest = Digest::of(&config);
        let config_size = config.len() as u64;
        self.blobs
            .insert(config_digest.clone(), (Held::Bytes(config), config_size));
        let mut layers = Vec::new();
        for (path, diff_id) in entry.layers.iter().zip(&parsed.rootfs.diff_ids) {
            let (mut r, size) = self.tar.open(path)?;
            let local = |source| PullError::Local {
                path: self.tar.file.join(path),
                source,
            };
            let mut head = [0u8; 4];
            let mut n = 0;
            while n < head.len() {
                let k = r.read(&mut head[n..]).map_err(local)?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            let media_type = manifest::sniff_layer_type(&head[..n]);
            let digest = if media_type == OCI_LAYER {
                diff_id.clone()
            } else {
                let (r, _) = self.tar.open(path)?;
                let mut v = crate::digest::Verifier::new(r);
                std::io::copy(&mut v, &mut std::io::sink()).map_err(local)?;
                v.finish()
            };
            self.blobs
                .insert(digest.clone(), (Held::Member(path.clone()), size));
            layers.push(Descriptor {
                media_type: media_type.to_string(),
                digest,
                size,
                platform: None,
                annotations: None,
            });
        }
        let m = ImageManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_string()),
            config: Descriptor {
                media_type: OCI_CONFIG.to_string(),
                digest: config_digest,
                size: config_size,
                platform: None,
                annotations: None,
            },
            layers,
        };
        let bytes = serde_json::to_vec(&m).expect("a manifest serialises");
        Ok(Top::Manifest(Fetched {
            digest: Digest::of(&bytes),
            bytes,
            media_type: Some(OCI_MANIFEST.to_string()),
        }))
    }

    fn manifest(&mut self, desc: &Descriptor) -> Result<Fetched, PullError> {
        Err(self.malformed(format!("no manifest {} in a docker archive", desc.digest)))
    }

    fn blob(&mut self, digest: &Digest) -> Result<Blob, PullError> {
        let Some((held, size)) = self.blobs.get(digest).cloned() else {
            return Err(self.malformed(format!("no blob {digest}")));
        };
        let reader: Box<dyn Read> = match held {
            Held::Bytes(b) => Box::new(std::io::Cursor::new(b)),
            Held::Member(m) => {
                let (offset, len) = self
                    .tar
                    .find(&m)
                    .ok_or_else(|| self.malformed(format!("no member {m}")))?;
                member_reader(&self.tar.file, offset, len)?
            }
        };
        Ok(Blob {
            reader,
            size: Some(size),
        })
    }

    fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("{}:{n}", self.tar.file.display()),
            None => self.tar.file.display().to_string(),
        }
    }
}

fn member_reader(file: &Path, offset: u64, len: u64) -> Result<Box<dyn Read>, PullError> {
    let local = |source| PullError::Local {
        path: file.to_path_buf(),
        source,
    };
    let mut f = File::open(file).map_err(local)?;
    f.seek(SeekFrom::Start(offset)).map_err(local)?;
    Ok(Box::new(f.take(len)))
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
