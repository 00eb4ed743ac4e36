//! stockade as an OCI runtime: the `stockade-runc` binary (and `stockade
//! oci …`) speak runc's command line so that containerd's shim, dockerd
//! and podman's conmon can run containers with stockade's isolation.
//!
//! - `config.rs`: the bundle's config.json, parsed and validated.
//! - `state.rs`: the state directory and the runtime-spec state.
//! - `cgroups.rs`: the cgroup at `linux.cgroupsPath`.
//! - `create.rs`: `create` and the container's init.
//! - `rootfs.rs`: the id-mapped root (an engine's overlay rebuilt).
//! - `mounts.rs`: the config's mounts, resolved inside the root.
//! - `process.rs`: ids, capabilities, seccomp, `execve`.
//! - `seccomp.rs`: the config's own seccomp profile as stacked filters.
//! - `ops.rs`: the other subcommands.
//! - `hooks.rs`: OCI hooks.
//! - `annotations.rs`: stockade's own policy through `org.stockade.*`.
//! - `supervise.rs`: the network behind the egress filter, the keeper's
//!   watch and the container's report; `exitwatch.rs`: init's exit status.
//! - `floor.rs`: what a config is refused for (capabilities, devices).
//! - `devices.rs`: `linux.devices`, bound from the host's harmless nodes.
//! - `landlock.rs`: the container's Landlock ruleset.

pub mod annotations;
pub mod cgroups;
pub mod config;
pub mod create;
pub mod devices;
pub mod exitwatch;
pub mod floor;
pub mod hooks;
pub mod landlock;
pub mod mounts;
pub mod ops;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod state;
pub mod supervise;
mod sys;

pub use create::{create, CreateOptions};
pub use ops::*;
