//! Linux mechanics of a stockade sandbox: namespaces, id maps, the root
//! filesystem, seccomp, Landlock, capabilities and the in-sandbox init.
//! Almost all of the project's `unsafe` lives here, each block with the
//! invariant it relies on.

pub mod caps;
pub mod etc;
pub mod files;
pub mod fsutil;
pub mod idmap;
pub mod init;
pub mod landlock_rules;
pub mod launch;
pub mod nspool;
pub mod proto;
pub mod rootfs;
pub mod seccomp;
pub mod slots;
pub mod spec;
pub mod sys;
pub mod tun;
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
