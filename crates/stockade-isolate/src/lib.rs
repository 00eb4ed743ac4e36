//! Linux mechanics of a stockade sandbox: namespaces, id maps, the root
//! filesystem, seccomp, Landlock, capabilities and the in-sandbox init.
//! Almost all of the project's `unsafe` lives here, each block with the
//! invariant it relies on.

pub mod basens;
pub mod caps;
pub mod etc;
pub mod files;
pub mod fsutil;
pub mod fuseov;
pub mod idmap;
pub mod init;
pub mod landlock_rules;
pub mod launch;
pub mod nspool;
pub mod proto;
pub mod rootfs;
pub mod rootless;
pub mod seccomp;
pub mod slots;
pub mod spec;
pub mod sys;
pub mod tun;
pub mod userpool;
pub mod workload;

#[cfg(test)]
mod test_spec;

/// An error and its causes, on one line (`a: b: c`), for messages that
/// cross a process boundary or end up in a report as text.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    /// Every error that carries an OS error as its cause says that cause
    /// once when printed with its chain.
    #[test]
    fn chains_say_each_os_error_once() {
        let io = || std::io::Error::from_raw_os_error(libc::EPERM);
        let errno = || nix::errno::Errno::EPERM;
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(crate::caps::CapsError::CapGet(io())),
            Box::new(crate::caps::CapsError::BoundingDrop {
                cap: 21,
                source: io(),
            }),
            Box::new(crate::caps::CapsError::NoNewPrivs(io())),
            Box::new(crate::caps::CapsError::AmbientRaise {
                cap: 3,
                source: io(),
            }),
            Box::new(crate::seccomp::SeccompError::Install {
                filter: "deny",
                source: io(),
            }),
            Box::new(crate::landlock_rules::LandlockError::Open {
                path: "/workspace".into(),
                source: io(),
            }),
            Box::new(crate::launch::LaunchError::Clone(errno())),
            Box::new(crate::launch::LaunchError::IdMap(io())),
            Box::new(crate::launch::LaunchError::Source {
                path: "/srv/data".into(),
                source: errno(),
            }),
            Box::new(crate::nspool::PoolError::Io("cannot make x".into(), io())),
            Box::new(crate::nspool::PoolError::Mount("/run/x".into(), errno())),
            Box::new(crate::proto::ProtoError::Io(errno())),
            Box::new(crate::rootfs::RootfsError {
                what: "cannot mount",
                path: "/proc".into(),
                source: errno(),
            }),
        ];
        for e in errors {
            let text = error_chain(&*e);
            assert_eq!(text.matches("Operation not permitted").count(), 1, "{text}");
        }
    }
}
