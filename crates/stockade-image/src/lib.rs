//! OCI images for stockade.
//!
//! - [`reference`]: image names (`python:3.11`, `docker.io/library/python:3.11`,
//!   `localhost:5000/x@sha256:…`) with Docker's defaults, and local sources
//!   (`oci:DIR[:TAG]`, `oci-archive:FILE`, `docker-archive:FILE`).
//! - [`digest`]: `sha256:<hex>` digests and a verifying writer.
//! - [`store`]: the content-addressed store under the state directory:
//!   verified blobs, layers unpacked once and shared read-only, image
//!   records, leases held by live sandboxes, `rmi` and `prune`.
//! - [`unpack`]: one layer's tar stream → a directory in overlayfs's
//!   format (whiteouts as 0/0 character devices, opaque directories as
//!   `user.overlay.opaque`), owners shifted into the disk id block, every
//!   hostile entry refused.
//! - [`registry`], [`auth`], [`source`], [`pull`]: the Distribution v2
//!   client and local archives, resolving a manifest for this platform and
//!   bringing its blobs into the store.
//! - [`config`]: the image configuration a sandbox honours.
//!
//! Nothing here starts a sandbox; stockade-core asks the store for an
//! [`store::Image`] and mounts its layers.

pub mod auth;
pub mod config;
pub mod digest;
pub mod manifest;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod source;
pub mod store;
#[cfg(test)]
mod testreg;
mod tls;
pub mod unpack;
pub mod userns;

pub use config::ImageConfig;
pub use digest::Digest;
pub use pull::{pull, Progress, PullError, PullOptions, PullPolicy};
pub use reference::{Reference, Source};
pub use store::{Image, ImageSummary, Lease, Store, StoreError, StoreLimits};

/// On-disk ids of image files: an image's id `i` (0..65536) is stored as
/// `DISK_ID_BASE + i` on the host, the block stockade-isolate's
/// `idmap::disk_map` maps back to `i` inside every sandbox. Nothing of an
/// image is ever owned by host root.
pub const DISK_ID_BASE: u32 = 2_000_000_000;
/// Ids an image may use (`0..MAPPED_IDS`); larger ones become
/// [`OVERFLOW_ID`] at unpack.
pub const MAPPED_IDS: u32 = 65_536;
/// The id a file with an id past [`MAPPED_IDS`] is given (`nobody`).
pub const OVERFLOW_ID: u32 = 65_534;
