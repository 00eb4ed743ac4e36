//! The launch's steps after the clone, checked against a recording
//! [`LaunchOps`]: no root, no namespaces, no init.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use stockade_policy::BindMount;

use super::*;
use crate::idmap::IdMap;
use crate::spec::{MountIdmap, SandboxSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Maps,
    Cgroup,
    Tun,
    OpenResolved(String),
    OpenClone(String),
    /// The first host uid of the map.
    NewUserns(u32),
    InitUserns,
    /// tree, namespace
    Idmap(String, String),
    /// `op` of the message, the name of a `lower`, the trees sent with it
    Send(String, Option<String>, Vec<String>),
    Abort,
    /// fuse-overlayfs lowers mounted and sent (rootless copy-on-write root)
    FuseLowers,
    /// clone3 into a cgroup, with these flags
    Clone3(libc::c_int),
    /// fork-style clone, with these flags
    Fork(libc::c_int),
}

/// Records; fails the step named in `fail`.
#[derive(Default)]
struct Recorder {
    /// Shared with the cgroup closure `finish` is given.
    log: std::rc::Rc<std::cell::RefCell<Vec<Op>>>,
    /// What each descriptor stands for.
    names: HashMap<RawFd, String>,
    fail: Option<&'static str>,
    /// Paths whose idmapping fails.
    idmap_fails: Vec<String>,
    /// What clone3 into a cgroup fails with.
    clone3_fails: Option<nix::errno::Errno>,
}

impl Recorder {
    fn failing(step: &'static str) -> Recorder {
        Recorder {
            fail: Some(step),
            ..Recorder::default()
        }
    }

    fn fd(&mut self, name: &str) -> OwnedFd {
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        self.names.insert(fd.as_raw_fd(), name.to_string());
        fd
    }

    fn name(&self, fd: RawFd) -> String {
        self.names[&fd].clone()
    }

    fn push(&self, op: Op) {
        self.log.borrow_mut().push(op);
    }

    fn ops(&self) -> Vec<Op> {
        self.log.borrow().clone()
    }

    fn fails(&self, step: &str) -> bool {
        self.fail == Some(step)
    }

    fn sent(&self) -> Vec<(String, Option<String>, Vec<String>)> {
        self.ops()
            .into_iter()
            .filter_map(|op| match op {
                Op::Send(a, b, c) => Some((a, b, c)),
                _ => None,
            })
            .collect()
    }

    fn launched(&mut self) -> Launched {
        Launched {
            pid: 4242,
            pidfd: self.fd("pidfd"),
            ctl: self.fd("ctl"),
            tun: None,
        }
    }
}

fn text(c: &CStr) -> String {
    c.to_str().unwrap().to_string()
}

impl LaunchOps for Recorder {
    fn write_maps(&mut self, pid: i32, _spec: &SandboxSpec) -> std::io::Result<()> {
        assert_eq!(pid, 4242);
        self.push(Op::Maps);
        if self.fails("maps") {
            return Err(std::io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
    fn make_tun(
        &mut self,
        pid: i32,
        cfg: &TunConfig,
        _rootless: bool,
    ) -> Result<OwnedFd, LaunchError> {
        assert_eq!(pid, 4242);
        // The caller's set-up reaches the device unchanged.
        assert_eq!(*cfg, crate::test_spec::TUN);
        self.push(Op::Tun);
        if self.fails("tun") {
            return Err(LaunchError::Tun("no /dev/net/tun".into()));
        }
        Ok(self.fd("tun"))
    }
    fn open_tree_resolved(&mut self, path: &CStr) -> nix::Result<OwnedFd> {
        self.push(Op::OpenResolved(text(path)));
        if self.fails(path.to_str().unwrap()) {
            return Err(nix::errno::Errno::ELOOP);
        }
        Ok(self.fd(&text(path)))
    }
    fn open_tree_clone(&mut self, path: &CStr) -> nix::Result<OwnedFd> {
        self.push(Op::OpenClone(text(path)));
        Ok(self.fd(&text(path)))
    }
    fn new_userns(&mut self, map: &MountIdmap) -> std::io::Result<OwnedFd> {
        // The agent's host id: in an owner's map, or in the disk block's.
        let base = map
            .uids
            .to_host(1000)
            .or_else(|| map.uids.to_host(crate::idmap::HOST_ID_BASE + 1000))
            .unwrap();
        self.push(Op::NewUserns(base));
        Ok(self.fd(&format!("userns {base}")))
    }
    fn init_userns(&mut self, _pid: i32) -> Option<OwnedFd> {
        self.push(Op::InitUserns);
        Some(self.fd("init's userns"))
    }
    fn fuse_lowers(
        &mut self,
        _spec: &SandboxSpec,
        _pid: i32,
        _ctl: &OwnedFd,
    ) -> Result<(), crate::fuseov::FuseError> {
        self.push(Op::FuseLowers);
        if self.fails("fuse") {
            return Err(crate::fuseov::FuseError::Missing);
        }
        Ok(())
    }
    fn idmap_tree(&mut self, tree: &OwnedFd, userns: &OwnedFd) -> nix::Result<()> {
        let (t, n) = (self.name(tree.as_raw_fd()), self.name(userns.as_raw_fd()));
        self.push(Op::Idmap(t.clone(), n));
        if self.idmap_fails.contains(&t) {
            return Err(nix::errno::Errno::EINVAL);
        }
        Ok(())
    }
    fn send(&mut self, ctl: &OwnedFd, msg: &proto::ToInit, fds: &[RawFd]) -> Result<(), ()> {
        assert_eq!(self.name(ctl.as_raw_fd()), "ctl");
        let (op, name) = match msg {
            proto::ToInit::Lower { name } => ("lower", Some(name.clone())),
            proto::ToInit::Go => ("go", None),
            other => panic!("unexpected message {other:?}"),
        };
        let trees = fds.iter().map(|fd| self.name(*fd)).collect();
        self.push(Op::Send(op.into(), name, trees));
        if self.fails(op) {
            return Err(());
        }
        Ok(())
    }
    fn abort(&mut self, launched: &Launched) {
        assert_eq!(launched.pid, 4242);
        self.push(Op::Abort);
    }
    unsafe fn clone_into_cgroup(
        &mut self,
        flags: libc::c_int,
        _cgroup: std::os::fd::BorrowedFd<'_>,
    ) -> nix::Result<Option<(i32, OwnedFd)>> {
        self.push(Op::Clone3(flags));
        match self.clone3_fails {
            Some(e) => Err(e),
            None => Ok(Some((4242, self.fd("pidfd")))),
        }
    }
    unsafe fn clone_fork(&mut self, flags: libc::c_int) -> nix::Result<Option<(i32, OwnedFd)>> {
        self.push(Op::Fork(flags));
        Ok(Some((4242, self.fd("pidfd"))))
    }
}

fn spec() -> SandboxSpec {
    crate::test_spec::spec("/staging")
}

fn owner_map(uid: u32) -> MountIdmap {
    MountIdmap {
        uids: IdMap::single(1000, uid),
        gids: IdMap::single(1000, uid),
    }
}

/// Runs `finish`; returns the result and whether the cgroup closure ran.
fn finish_with(
    k: &mut Recorder,
    spec: &SandboxSpec,
    pooled: bool,
    joined: bool,
    cgroup: Result<(), String>,
) -> (Result<Launched, LaunchError>, bool) {
    let launched = k.launched();
    let mut called = false;
    let log = k.log.clone();
    let maps = if pooled { Maps::Written } else { Maps::Write };
    let r = finish(k, spec, launched, maps, joined, |pid| {
        assert_eq!(pid, 4242);
        called = true;
        log.borrow_mut().push(Op::Cgroup);
        cgroup
    });
    (r, called)
}

#[test]
fn steps_run_in_order_and_end_with_the_go_ahead() {
    let mut s = spec();
    s.net = Some(crate::test_spec::TUN);
    let mut k = Recorder::default();
    let (r, _) = finish_with(&mut k, &s, false, false, Ok(()));
    let l = r.unwrap();
    assert!(l.tun.is_some());
    assert_eq!(
        k.ops(),
        [
            Op::Maps,
            Op::Cgroup,
            Op::Tun,
            Op::OpenResolved(s.workspace.display().to_string()),
            Op::Send(
                "lower".into(),
                Some(crate::rootfs::WORKSPACE_TREE.into()),
                vec![s.workspace.display().to_string()]
            ),
            Op::Send("go".into(), None, vec![]),
        ]
    );
}

#[test]
fn an_ordinary_users_overlay_root_is_served_by_fuse_before_the_go_ahead() {
    let mut s = spec();
    s.rootless = Some(crate::rootless::RootlessIds::Single);
    s.overlay = Some("/ov".into());
    let mut k = Recorder::default();
    let (r, _) = finish_with(&mut k, &s, false, false, Ok(()));
    r.unwrap();
    // Nothing is cloned or idmapped from the host's namespace.
    assert_eq!(
        k.ops(),
        [
            Op::Maps,
            Op::Cgroup,
            Op::FuseLowers,
            Op::Send("go".into(), None, vec![])
        ]
    );
    // Its failure kills init, with no go-ahead.
    let mut k = Recorder {
        fail: Some("fuse"),
        ..Recorder::default()
    };
    let (r, _) = finish_with(&mut k, &s, false, false, Ok(()));
    assert!(matches!(r, Err(LaunchError::Fuse(_))));
    assert_eq!(k.ops().last(), Some(&Op::Abort));
    // Without an overlay root, or as root, no daemon.
    for (rootless, overlay) in [(true, None), (false, Some("/ov".into()))] {
        let mut s = spec();
        s.rootless = rootless.then_some(crate::rootless::RootlessIds::Single);
        s.overlay = overlay;
        let mut k = Recorder::default();
        let _ = finish_with(&mut k, &s, false, false, Ok(()));
        assert!(!k.ops().contains(&Op::FuseLowers));
    }
}

#[test]
fn a_pooled_pair_keeps_its_maps_and_a_self_joined_init_its_cgroup() {
    let mut k = Recorder::default();
    let (r, called) = finish_with(&mut k, &spec(), true, true, Err("must not run".into()));
    r.unwrap();
    assert!(!called);
    assert!(!k.ops().contains(&Op::Maps));
    // Without egress there is no TUN device.
    assert!(!k.ops().contains(&Op::Tun));
}

#[test]
fn every_failed_step_kills_init_and_sends_no_go_ahead() {
    let mut s = spec();
    s.net = Some(crate::test_spec::TUN);
    s.ro_binds.push(BindMount {
        src: "/srv/data".into(),
        dst: "/data".into(),
    });
    for (step, want) in [
        ("maps", "id maps"),
        ("cgroup", "cgroup: no room"),
        ("tun", "network device"),
        ("/srv/data", "/srv/data"),
        ("go", "exited before it started"),
    ] {
        let mut k = Recorder::failing(step);
        let cgroup = if step == "cgroup" {
            Err("no room".to_string())
        } else {
            Ok(())
        };
        let (r, _) = finish_with(&mut k, &s, false, false, cgroup);
        let err = r.err().unwrap_or_else(|| panic!("{step}: launched"));
        assert!(err.to_string().contains(want), "{step}: {err}");
        assert_eq!(k.ops().last(), Some(&Op::Abort), "{step}: {:?}", k.ops());
        assert_eq!(
            k.ops().iter().filter(|op| **op == Op::Abort).count(),
            1,
            "{step}"
        );
        if step != "go" {
            assert!(
                !k.sent().iter().any(|(op, ..)| op == "go"),
                "{step}: go-ahead sent"
            );
        }
    }
}

#[test]
fn binds_of_one_owner_share_one_user_namespace() {
    let mut s = spec();
    s.workspace_idmap = Some(owner_map(1000));
    for (i, uid) in [1000, 1000, 2000].into_iter().enumerate() {
        s.binds.push(BindMount {
            src: format!("/srv/rw{i}").into(),
            dst: format!("/rw{i}").into(),
        });
        s.bind_idmaps.push(owner_map(uid));
    }
    s.ro_binds.push(BindMount {
        src: "/srv/ro".into(),
        dst: "/ro".into(),
    });
    let mut k = Recorder::default();
    finish_with(&mut k, &s, false, false, Ok(())).0.unwrap();
    let made: Vec<_> = k
        .ops()
        .iter()
        .filter(|op| matches!(op, Op::NewUserns(_)))
        .cloned()
        .collect();
    assert_eq!(made, [Op::NewUserns(1000), Op::NewUserns(2000)]);
    let idmapped: HashMap<String, String> = k
        .ops()
        .iter()
        .filter_map(|op| match op {
            Op::Idmap(t, n) => Some((t.clone(), n.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(idmapped[&s.workspace.display().to_string()], "userns 1000");
    assert_eq!(idmapped["/srv/rw0"], "userns 1000");
    assert_eq!(idmapped["/srv/rw1"], "userns 1000");
    assert_eq!(idmapped["/srv/rw2"], "userns 2000");
    // A read-only bind keeps the host's ids.
    assert!(!idmapped.contains_key("/srv/ro"));
    // Read-only binds are numbered first, as the root builder expects.
    let names: Vec<_> = k
        .sent()
        .into_iter()
        .filter_map(|(_, n, t)| n.map(|n| (n, t)))
        .collect();
    assert!(names.contains(&(
        crate::rootfs::bind_tree_name(0),
        vec!["/srv/ro".to_string()]
    )));
    assert!(names.contains(&(
        crate::rootfs::bind_tree_name(1),
        vec!["/srv/rw0".to_string()]
    )));
}

#[test]
fn overlay_lowers_are_idmapped_through_inits_namespace_and_skipped_when_that_fails() {
    let mut s = spec();
    s.overlay = Some("/scratch/ov".into());
    let lowers = crate::rootfs::overlay_lowers(&s);
    assert!(lowers.iter().any(|(n, _)| n == "usr"), "{lowers:?}");
    let mut k = Recorder::default();
    k.idmap_fails.push("/usr".into());
    finish_with(&mut k, &s, false, false, Ok(())).0.unwrap();
    let sent: Vec<_> = k.sent().into_iter().filter_map(|(_, n, _)| n).collect();
    // /usr could not be idmapped: not sent (init falls back to the host
    // path); the generated /etc was.
    assert!(!sent.contains(&"usr".to_string()), "{sent:?}");
    assert!(sent.contains(&"etc".to_string()), "{sent:?}");
    let etc: PathBuf = s.etc_dir.clone();
    assert!(k.ops().contains(&Op::Idmap(
        etc.display().to_string(),
        "init's userns".into()
    )));
}

#[test]
fn bind_sources_are_opened_without_following_symlinks() {
    let mut s = spec();
    s.ro_binds.push(BindMount {
        src: "/srv/ro".into(),
        dst: "/ro".into(),
    });
    s.binds.push(BindMount {
        src: "/srv/rw".into(),
        dst: "/rw".into(),
    });
    let mut k = Recorder::default();
    finish_with(&mut k, &s, false, false, Ok(())).0.unwrap();
    let opened: Vec<Op> = k
        .ops()
        .into_iter()
        .filter(|op| matches!(op, Op::OpenResolved(_) | Op::OpenClone(_)))
        .collect();
    assert_eq!(
        opened,
        [
            Op::OpenResolved(s.workspace.display().to_string()),
            Op::OpenResolved("/srv/ro".into()),
            Op::OpenResolved("/srv/rw".into()),
        ]
    );
}

#[test]
fn a_writable_bind_that_cannot_be_idmapped_fails_the_launch() {
    // Unlike a lower layer of the copy-on-write root (skipped, the host
    // path serves instead), a bind without its owner's ids would let the
    // agent write files owned by ids the directory's owner does not hold.
    let mut s = spec();
    s.binds.push(BindMount {
        src: "/srv/rw".into(),
        dst: "/rw".into(),
    });
    s.bind_idmaps.push(owner_map(1000));
    let mut k = Recorder::default();
    k.idmap_fails.push("/srv/rw".into());
    let (r, _) = finish_with(&mut k, &s, false, false, Ok(()));
    match r {
        Err(LaunchError::Idmap { path, source }) => {
            assert_eq!(path, "/srv/rw");
            assert_eq!(source, nix::errno::Errno::EINVAL);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(k.ops().last(), Some(&Op::Abort));
    // The workspace went before it; the bind and the go-ahead never did.
    let sent: Vec<_> = k.sent().into_iter().map(|(op, n, _)| (op, n)).collect();
    assert_eq!(
        sent,
        [(
            "lower".to_string(),
            Some(crate::rootfs::WORKSPACE_TREE.to_string())
        )]
    );
}

#[test]
fn init_is_born_in_its_cgroup_where_clone3_can_else_forked_and_moved() {
    use nix::errno::Errno;
    let flags = NAMESPACES;
    let cgroup = std::fs::File::open("/dev/null").unwrap();
    let tasks: Vec<OwnedFd> = vec![std::fs::File::open("/dev/null").unwrap().into()];
    // (cgroup v2 directory given, clone3's failure, init joins itself)
    // -> the clones tried, and whether init is in its cgroup afterwards
    //    (else the supervisor moves it).
    type Case<'a> = (bool, Option<Errno>, bool, &'a [Op], bool);
    let cases: [Case<'_>; 7] = [
        (true, None, false, &[Op::Clone3(flags)], true),
        (true, None, true, &[Op::Clone3(flags)], true),
        // A kernel without clone3, or without CLONE_INTO_CGROUP: forked,
        // then moved by the supervisor or by init itself.
        (
            true,
            Some(Errno::ENOSYS),
            false,
            &[Op::Clone3(flags), Op::Fork(flags)],
            false,
        ),
        (
            true,
            Some(Errno::E2BIG),
            true,
            &[Op::Clone3(flags), Op::Fork(flags)],
            true,
        ),
        // cgroup v1: no directory to be born in.
        (false, None, false, &[Op::Fork(flags)], false),
        (false, None, true, &[Op::Fork(flags)], true),
        // Any other refusal (limits, permissions) is the launch's failure,
        // not a reason to start init outside its cgroup.
        (
            true,
            Some(Errno::EAGAIN),
            false,
            &[Op::Clone3(flags)],
            false,
        ),
    ];
    for (i, (v2, fails, self_joins, tried, joined)) in cases.into_iter().enumerate() {
        let mut k = Recorder {
            clone3_fails: fails,
            ..Recorder::default()
        };
        let into = v2.then(|| cgroup.as_fd());
        let self_join = if self_joins { &tasks[..] } else { &[] };
        // SAFETY: the recorder clones nothing.
        let r = unsafe { clone_init(&mut k, flags, into, self_join) };
        assert_eq!(k.ops(), tried, "case {i}");
        match (r, fails) {
            (Ok(Cloned::Parent { pid, joined: j, .. }), _) => {
                assert_eq!(pid, 4242);
                assert_eq!(j, joined, "case {i}");
            }
            (Err(e), Some(Errno::EAGAIN)) => assert_eq!(e, Errno::EAGAIN),
            (Err(e), _) => panic!("case {i}: {e}"),
            (Ok(Cloned::Init), _) => panic!("case {i}: the child's side"),
        }
    }
}

/// An image root of `n` layers at `/store/layers/l<i>`, for a sandbox
/// whose slot starts at 3,000,000,000.
fn image_spec(n: usize) -> SandboxSpec {
    let mut s = spec();
    s.overlay = Some("/scratch/s1/overlay".into());
    s.image = Some(crate::spec::ImageRoot {
        layers: (0..n)
            .map(|i| PathBuf::from(format!("/store/layers/l{i}")))
            .collect(),
        idmap: MountIdmap {
            uids: crate::idmap::disk_map(3_000_000_000, None),
            gids: crate::idmap::disk_map(3_000_000_000, None),
        },
    });
    s
}

#[test]
fn image_layers_are_idmapped_through_one_namespace_and_sent_bottom_first() {
    let s = image_spec(3);
    let mut k = Recorder::default();
    let (r, _) = finish_with(&mut k, &s, false, false, Ok(()));
    r.unwrap();
    let ops = k.ops();
    // One namespace, made with the image's map (the disk block's agent id
    // lands on the slot's agent id), for all the layers.
    let userns: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op, Op::NewUserns(_)))
        .collect();
    assert_eq!(userns, [&Op::NewUserns(3_000_000_000 + 1000)]);
    for i in 0..3 {
        let dir = format!("/store/layers/l{i}");
        assert!(ops.contains(&Op::OpenClone(dir.clone())), "{ops:#?}");
        assert!(ops.contains(&Op::Idmap(
            dir.clone(),
            format!("userns {}", 3_000_000_000u32 + 1000)
        )));
    }
    let layers: Vec<(Option<String>, Vec<String>)> = k
        .sent()
        .into_iter()
        .filter(|(_, n, _)| n.as_deref().is_some_and(|n| n.starts_with("img")))
        .map(|(_, n, t)| (n, t))
        .collect();
    assert_eq!(
        layers,
        (0..3)
            .map(|i| (Some(format!("img{i}")), vec![format!("/store/layers/l{i}")]))
            .collect::<Vec<_>>()
    );
    // The image's root is not the host's: no host directory is overlaid.
    assert!(!ops.contains(&Op::InitUserns));
    assert_eq!(k.sent().last().unwrap().0, "go");
}

#[test]
fn an_image_layer_that_cannot_be_idmapped_fails_the_launch() {
    let s = image_spec(3);
    let mut k = Recorder::default();
    k.idmap_fails.push("/store/layers/l1".into());
    let (r, _) = finish_with(&mut k, &s, false, false, Ok(()));
    match r {
        Err(e @ LaunchError::Idmap { .. }) => {
            let text = crate::error_chain(&e);
            assert!(text.contains("/store/layers/l1"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(k.ops().last(), Some(&Op::Abort));
    // Layer 0 went; layer 1 (unmapped owners) and the go-ahead never did.
    let names: Vec<Option<String>> = k.sent().into_iter().map(|(_, n, _)| n).collect();
    assert_eq!(names, [Some("img0".to_string())]);
}

#[test]
fn an_image_of_too_many_layers_is_refused_before_any_is_opened() {
    let s = image_spec(crate::spec::MAX_IMAGE_LAYERS + 1);
    let mut k = Recorder::default();
    let (r, _) = finish_with(&mut k, &s, false, false, Ok(()));
    let e = r.unwrap_err();
    assert!(matches!(e, LaunchError::TooManyLayers(121)), "{e:?}");
    assert!(e.to_string().contains("121 layers"), "{e}");
    assert!(!k
        .ops()
        .iter()
        .any(|op| matches!(op, Op::OpenClone(p) if p.starts_with("/store"))));
    assert_eq!(k.ops().last(), Some(&Op::Abort));
}
