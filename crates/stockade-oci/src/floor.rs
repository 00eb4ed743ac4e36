//! stockade's floor over a config, checked before anything is made:
//! what a config may ask for and still run under stockade. What is
//! refused here fails `create` (or `exec`) with a sentence naming the
//! request; what stockade tightens silently (a user namespace added,
//! sysfs read-only, mounts never propagating to the host) is done where
//! the container is built. docs/oci-runtime.md lists both.

use crate::config::{ConfigError, Process, Spec};

/// The most capabilities a container's process may hold (in its user
/// namespace): the set Docker, containerd and Kubernetes give a container
/// by default (podman's is a subset). Anything beyond — `CAP_SYS_ADMIN`,
/// `CAP_SYS_PTRACE`, `CAP_NET_ADMIN`, `CAP_BPF`, every capability of
/// `--privileged` — is refused: stockade's seccomp denylist blocks what
/// most of them are for (mount, ptrace, bpf, module loading), so granting
/// them would only look like it worked.
pub const CEILING: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

fn allowed(name: &str) -> bool {
    let full = if name.to_ascii_uppercase().starts_with("CAP_") {
        name.to_ascii_uppercase()
    } else {
        format!("CAP_{}", name.to_ascii_uppercase())
    };
    CEILING.contains(&full.as_str())
}

/// Refuses capabilities above [`CEILING`] in any of the process's sets.
pub fn check_capabilities(p: &Process) -> Result<(), ConfigError> {
    let Some(c) = &p.capabilities else {
        return Ok(());
    };
    let mut over: Vec<&str> = [
        &c.bounding,
        &c.effective,
        &c.permitted,
        &c.inheritable,
        &c.ambient,
    ]
    .into_iter()
    .flatten()
    .map(String::as_str)
    .filter(|n| !allowed(n))
    .collect();
    over.sort_unstable();
    over.dedup();
    if over.is_empty() {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "process.capabilities asks for {}, which stockade does not grant (at most {}); \
         remove them (docker/podman --cap-add, --privileged)",
        over.join(", "),
        CEILING.join(", ")
    )))
}

/// Everything of the floor that a config can be refused for.
pub fn check(spec: &Spec) -> Result<(), ConfigError> {
    check_capabilities(spec.process()?)?;
    crate::devices::validate(&spec.linux().devices)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Capabilities;

    fn with_caps(names: &[&str]) -> Process {
        let v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Process {
            capabilities: Some(Capabilities {
                bounding: v.clone(),
                effective: v.clone(),
                permitted: v,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_engines_default_set_passes() {
        assert!(check_capabilities(&with_caps(CEILING)).is_ok());
        assert!(check_capabilities(&with_caps(&["net_bind_service"])).is_ok());
    }

    #[test]
    fn sys_admin_and_ptrace_are_refused_by_name() {
        let e = check_capabilities(&with_caps(&[
            "CAP_CHOWN",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE",
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("CAP_SYS_ADMIN, CAP_SYS_PTRACE") && !e.contains("asks for CAP_CHOWN"),
            "{e}"
        );
    }
}
