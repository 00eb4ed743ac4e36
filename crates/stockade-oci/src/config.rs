//! The part of a bundle's `config.json` (runtime-spec) that stockade
//! honours, parsed then validated. Unknown keys are ignored, as the spec
//! asks of runtimes; values stockade cannot honour safely are refused by
//! [`Spec::validate`] with a sentence that names the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a bundle's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The bundle directory or its config.json cannot be read.
    #[error("cannot read {path}: check that --bundle names a directory holding config.json")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// config.json is not a valid runtime-spec document.
    #[error("{path} is not a valid OCI runtime configuration")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A value stockade refuses; the message names the key.
    #[error("config.json: {0}")]
    Invalid(String),
    #[error("config.json")]
    Annotation(#[from] crate::annotations::AnnotationError),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub oci_version: String,
    pub root: Option<Root>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    pub process: Option<Process>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub hooks: Option<Hooks>,
    pub linux: Option<Linux>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "root_dir")]
    pub cwd: String,
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

fn root_dir() -> String {
    "/".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct ConsoleSize {
    pub height: u16,
    pub width: u16,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub umask: Option<u32>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default)]
    pub prestart: Vec<Hook>,
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    #[serde(default)]
    pub create_container: Vec<Hook>,
    #[serde(default)]
    pub start_container: Vec<Hook>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Hook {
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub uid_mappings: Vec<IdMapping>,
    #[serde(default)]
    pub gid_mappings: Vec<IdMapping>,
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub cgroups_path: Option<String>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    #[serde(default)]
    pub seccomp: Option<serde_json::Value>,
    /// Device nodes to make (`devices.rs`: only harmless ones, bound from
    /// the host).
    #[serde(default)]
    pub devices: Vec<crate::devices::Device>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceKind {
    Pid,
    Network,
    Mount,
    Ipc,
    Uts,
    User,
    Cgroup,
    Time,
}

impl NamespaceKind {
    /// The name of the namespace's file under `/proc/<pid>/ns/`.
    pub fn proc_name(self) -> &'static str {
        match self {
            NamespaceKind::Pid => "pid",
            NamespaceKind::Network => "net",
            NamespaceKind::Mount => "mnt",
            NamespaceKind::Ipc => "ipc",
            NamespaceKind::Uts => "uts",
            NamespaceKind::User => "user",
            NamespaceKind::Cgroup => "cgroup",
            NamespaceKind::Time => "time",
        }
    }

    pub fn clone_flag(self) -> libc::c_int {
        match self {
            NamespaceKind::Pid => libc::CLONE_NEWPID,
            NamespaceKind::Network => libc::CLONE_NEWNET,
            NamespaceKind::Mount => libc::CLONE_NEWNS,
            NamespaceKind::Ipc => libc::CLONE_NEWIPC,
            NamespaceKind::Uts => libc::CLONE_NEWUTS,
            NamespaceKind::User => libc::CLONE_NEWUSER,
            NamespaceKind::Cgroup => libc::CLONE_NEWCGROUP,
            NamespaceKind::Time => 0x80,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: NamespaceKind,
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdMapping {
    #[serde(rename = "containerID")]
    pub container_id: u32,
    #[serde(rename = "hostID")]
    pub host_id: u32,
    pub size: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Resources {
    #[serde(default)]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub cpu: Option<Cpu>,
    #[serde(default)]
    pub pids: Option<Pids>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Memory {
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub swap: Option<i64>,
    #[serde(default)]
    pub reservation: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Cpu {
    #[serde(default)]
    pub shares: Option<u64>,
    #[serde(default)]
    pub quota: Option<i64>,
    #[serde(default)]
    pub period: Option<u64>,
    #[serde(default)]
    pub cpus: Option<String>,
    #[serde(default)]
    pub mems: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Pids {
    pub limit: i64,
}

/// The annotation that bounds a container's run time.
pub const TIMEOUT_ANNOTATION: &str = crate::annotations::TIMEOUT;

/// Sysctls a container may set: those of namespaces it owns (as runc's
/// list). Anything else would change the host.
fn sysctl_allowed(key: &str, own_net: bool, own_ipc: bool) -> bool {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        return own_ipc;
    }
    if key.starts_with("net.") {
        return own_net;
    }
    false
}

impl Spec {
    /// Reads and parses `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Spec, ConfigError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| ConfigError::Parse { path, source })
    }

    pub fn process(&self) -> Result<&Process, ConfigError> {
        self.process.as_ref().ok_or_else(|| {
            ConfigError::Invalid(
                "\"process\" is missing: a container needs a process to run".into(),
            )
        })
    }

    pub fn linux(&self) -> &Linux {
        static EMPTY: std::sync::OnceLock<Linux> = std::sync::OnceLock::new();
        self.linux
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Linux::default))
    }

    /// The namespace entry of a kind, if the config lists it.
    pub fn namespace(&self, kind: NamespaceKind) -> Option<&Namespace> {
        self.linux().namespaces.iter().find(|n| n.kind == kind)
    }

    /// The root filesystem's directory: `root.path`, relative to the bundle.
    pub fn rootfs(&self, bundle: &Path) -> Result<PathBuf, ConfigError> {
        let root = self.root.as_ref().ok_or_else(|| {
            ConfigError::Invalid(
                "\"root\" is missing: name the container's root filesystem in root.path".into(),
            )
        })?;
        Ok(bundle.join(&root.path))
    }

    /// The `org.stockade.*` annotations, parsed and checked.
    pub fn stockade_annotations(
        &self,
    ) -> Result<crate::annotations::Annotations, crate::annotations::AnnotationError> {
        crate::annotations::parse(&self.annotations)
    }

    /// Checks what stockade refuses or cannot honour, before anything is
    /// made.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        // stockade's own annotations: unknown keys are refused (see
        // `annotations.rs`).
        self.stockade_annotations()?;
        let process = self.process()?;
        if process.args.is_empty() {
            return bad("process.args is empty: name the program to run".into());
        }
        if !process.cwd.starts_with('/') {
            return bad(format!(
                "process.cwd must be an absolute path, got {:?}",
                process.cwd
            ));
        }
        let linux = self.linux();
        let mut seen = Vec::new();
        for ns in &linux.namespaces {
            if seen.contains(&ns.kind) {
                return bad(format!(
                    "linux.namespaces lists {:?} twice",
                    ns.kind.proc_name()
                ));
            }
            seen.push(ns.kind);
            match (ns.kind, &ns.path) {
                (NamespaceKind::User | NamespaceKind::Mount, Some(p)) => {
                    return bad(format!(
                        "linux.namespaces: joining an existing {} namespace ({}) is not supported: \
                         stockade always makes the container's own user and mount namespaces",
                        ns.kind.proc_name(),
                        p.display()
                    ))
                }
                (NamespaceKind::Time, _) => {
                    return bad("linux.namespaces: time namespaces are not supported".into())
                }
                _ => {}
            }
        }
        if self.namespace(NamespaceKind::Pid).is_none() {
            return bad(
                "linux.namespaces has no \"pid\" entry: stockade does not run containers in the \
                 host's pid namespace"
                    .into(),
            );
        }
        if self.namespace(NamespaceKind::Mount).is_none() {
            return bad(
                "linux.namespaces has no \"mount\" entry: stockade does not run containers in the \
                 host's mount namespace"
                    .into(),
            );
        }
        if let Some(p) = self
            .namespace(NamespaceKind::Pid)
            .and_then(|n| n.path.as_ref())
        {
            // A pid namespace owned by the host's user namespace would make
            // a fresh /proc impossible; checked again when joining.
            let _ = p;
        }
        for m in [&linux.uid_mappings, &linux.gid_mappings] {
            for e in m {
                if e.host_id < crate::create::MIN_MAPPED_HOST_ID {
                    return bad(format!(
                        "linux.uidMappings/gidMappings map container id {} to host id {}: stockade \
                         maps containers only onto host ids from {} up, never onto host system users",
                        e.container_id,
                        e.host_id,
                        crate::create::MIN_MAPPED_HOST_ID
                    ));
                }
            }
        }
        let own = |k| self.namespace(k).is_some_and(|n| n.path.is_none());
        for key in linux.sysctl.keys() {
            if !sysctl_allowed(
                key,
                own(NamespaceKind::Network) || self.namespace(NamespaceKind::Network).is_some(),
                own(NamespaceKind::Ipc),
            ) {
                return bad(format!(
                    "linux.sysctl: {key:?} is not a sysctl of the container's own namespaces; \
                     stockade sets only net.* (with a network namespace) and IPC sysctls"
                ));
            }
        }
        for m in &self.mounts {
            if !m.destination.starts_with('/') {
                return bad(format!(
                    "mounts: destination {:?} must be an absolute path",
                    m.destination
                ));
            }
        }
        if let Some(r) = &linux.resources {
            if let Some(l) = r.memory.as_ref().and_then(|m| m.limit) {
                if l > 0 && l < 4 << 20 {
                    return bad(format!(
                        "linux.resources.memory.limit is {l} bytes: give at least 4 MiB"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Spec, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn unknown_namespace_type_is_a_parse_error_naming_it() {
        let e = parse(r#"{"linux":{"namespaces":[{"type":"bogus"}]}}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn refuses_joining_a_user_namespace() {
        let s = parse(
            r#"{"process":{"args":["sh"]},"linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"user","path":"/proc/1/ns/user"}]}}"#,
        )
        .unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("user namespace"), "{e}");
    }

    #[test]
    fn refuses_mapping_onto_host_root() {
        let s = parse(
            r#"{"process":{"args":["sh"]},"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}],
               "uidMappings":[{"containerID":0,"hostID":0,"size":1}]}}"#,
        )
        .unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("host id 0"), "{e}");
    }

    #[test]
    fn refuses_a_host_sysctl() {
        let s = parse(
            r#"{"process":{"args":["sh"]},"linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"network"}],
               "sysctl":{"kernel.panic":"1","net.ipv4.ip_forward":"1"}}}"#,
        )
        .unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("kernel.panic"), "{e}");
    }

    #[test]
    fn unknown_stockade_annotations_and_bad_timeouts_are_refused() {
        use std::error::Error;
        let base = r#"{"process":{"args":["sh"]},"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]},"annotations":"#;
        let with = |a: &str| parse(&format!("{base}{a}}}")).unwrap().validate();
        assert!(with(r#"{"org.stockade.net.allow-all":"yes"}"#)
            .unwrap_err()
            .source()
            .unwrap()
            .to_string()
            .contains("not one stockade-runc knows"));
        with(r#"{"org.stockade.policy":"/etc/p.toml"}"#).unwrap();
        assert!(with(r#"{"org.stockade.timeout":"soon"}"#).is_err());
        with(r#"{"org.stockade.timeout":"1h30m","org.other":"x"}"#).unwrap();
    }

    #[test]
    fn accepts_a_plain_config() {
        let s = parse(
            r#"{"process":{"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"},
               "linux":{"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"network","path":"/run/netns/x"}]}}"#,
        )
        .unwrap();
        s.validate().unwrap();
    }
}
