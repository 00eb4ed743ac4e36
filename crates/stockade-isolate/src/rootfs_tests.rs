//! The builder's decisions, checked against a recording [`MountOps`]:
//! no root, no namespaces, nothing mounted.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use stockade_policy::BindMount;

use super::*;
use crate::spec::SandboxSpec;

/// A mount as the fake saw it: source, target, fstype, flags, data.
type Mounted = (
    Option<PathBuf>,
    PathBuf,
    Option<String>,
    MsFlags,
    Option<String>,
);

/// One operation as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Mkdir(PathBuf),
    File(PathBuf),
    Remove(PathBuf),
    Symlink(PathBuf, PathBuf),
    /// source, target, fstype, flags, data
    Mount(
        Option<PathBuf>,
        PathBuf,
        Option<String>,
        MsFlags,
        Option<String>,
    ),
    Umount(PathBuf),
    Setattr(PathBuf, u64, bool),
    /// tree (what it was cloned from, or the name it was given), target
    Move(String, PathBuf),
    Clone(PathBuf),
    Chdir(PathBuf),
    /// new root, where the old one goes
    PivotRoot(PathBuf, PathBuf),
}

/// Records every operation; answers host lookups from `host`; fails a
/// mount whose target is `fail_at`, and the `fail_call`-th operation that
/// can fail (counted from 0; host lookups and `remove_dir` cannot).
#[derive(Default)]
struct Recorder {
    ops: Vec<Op>,
    host: HashMap<PathBuf, HostKind>,
    /// What each tree descriptor stands for (by raw fd).
    trees: HashMap<i32, (String, bool)>,
    fail_at: Option<PathBuf>,
    fail_call: Option<usize>,
    /// Operations that could have failed so far.
    calls: usize,
    /// The operation made to fail by `fail_call`.
    failed: Option<Op>,
}

fn path_of(c: &CStr) -> PathBuf {
    PathBuf::from(c.to_str().unwrap())
}

impl Recorder {
    /// A merged-/usr host: /usr and /lib64 are directories, /bin, /sbin
    /// and /lib symlinks into /usr.
    fn debian() -> Recorder {
        let mut r = Recorder::default();
        r.host.insert("/usr".into(), HostKind::Dir);
        r.host
            .insert("/bin".into(), HostKind::Symlink("usr/bin".into()));
        r.host
            .insert("/sbin".into(), HostKind::Symlink("usr/sbin".into()));
        r.host
            .insert("/lib".into(), HostKind::Symlink("usr/lib".into()));
        r.host.insert("/lib64".into(), HostKind::Dir);
        for d in [
            "/var/lib/dpkg",
            "/var/lib/apt",
            "/var/cache/apt",
            "/var/cache/debconf",
        ] {
            r.host.insert(d.into(), HostKind::Dir);
        }
        r
    }

    /// Records `op`, an operation that can fail, and says whether it does.
    fn call(&mut self, op: Op) -> nix::Result<()> {
        self.ops.push(op);
        let n = self.calls;
        self.calls += 1;
        if self.fail_call == Some(n) {
            self.failed = self.ops.last().cloned();
            return Err(nix::errno::Errno::EPERM);
        }
        Ok(())
    }

    fn io_call(&mut self, op: Op) -> std::io::Result<()> {
        self.call(op)
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
    }

    /// A tree descriptor standing for `what` (a real fd, so it can be
    /// owned and dropped).
    fn tree(&mut self, what: &str, is_dir: bool) -> OwnedFd {
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        self.trees
            .insert(fd.as_raw_fd(), (what.to_string(), is_dir));
        fd
    }

    fn mounts(&self) -> Vec<Mounted> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Mount(a, b, c, d, e) => Some((a.clone(), b.clone(), c.clone(), *d, e.clone())),
                _ => None,
            })
            .collect()
    }

    fn position(&self, f: impl Fn(&Op) -> bool) -> usize {
        self.ops
            .iter()
            .position(f)
            .unwrap_or_else(|| panic!("no such operation in {:#?}", self.ops))
    }

    fn setattr_of(&self, target: &str) -> Vec<(u64, bool)> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Setattr(p, a, rec) if p == Path::new(target) => Some((*a, *rec)),
                _ => None,
            })
            .collect()
    }
}

impl MountOps for Recorder {
    fn mkdir_all(&mut self, path: &Path, _mode: u32) -> std::io::Result<()> {
        self.io_call(Op::Mkdir(path.into()))
    }
    fn make_file(&mut self, path: &Path) -> nix::Result<()> {
        self.call(Op::File(path.into()))
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> std::io::Result<()> {
        self.io_call(Op::Symlink(target.into(), link.into()))
    }
    fn remove_dir(&mut self, _path: &Path) {}
    fn remove_file(&mut self, path: &Path) -> std::io::Result<()> {
        self.io_call(Op::Remove(path.into()))
    }
    fn host_kind(&mut self, path: &Path) -> Option<HostKind> {
        self.host.get(path).cloned()
    }
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        if self.fail_at.as_deref() == Some(target) {
            return Err(nix::errno::Errno::EPERM);
        }
        self.call(Op::Mount(
            source.map(Into::into),
            target.into(),
            fstype.map(Into::into),
            flags,
            data.map(Into::into),
        ))
    }
    fn umount_detach(&mut self, path: &Path) -> nix::Result<()> {
        self.call(Op::Umount(path.into()))
    }
    fn mount_setattr(&mut self, path: &CStr, attrs: u64, recursive: bool) -> nix::Result<()> {
        self.call(Op::Setattr(path_of(path), attrs, recursive))
    }
    fn move_mount(&mut self, tree: &OwnedFd, target: &CStr) -> nix::Result<()> {
        let what = self.trees[&tree.as_raw_fd()].0.clone();
        self.call(Op::Move(what, path_of(target)))
    }
    fn open_tree_clone(&mut self, source: &CStr) -> nix::Result<OwnedFd> {
        self.call(Op::Clone(path_of(source)))?;
        let is_dir = !path_of(source).to_string_lossy().ends_with(".txt");
        Ok(self.tree(source.to_str().unwrap(), is_dir))
    }
    fn tree_is_dir(&mut self, tree: &OwnedFd) -> bool {
        self.trees[&tree.as_raw_fd()].1
    }
    fn chdir(&mut self, path: &Path) -> nix::Result<()> {
        self.call(Op::Chdir(path.into()))
    }
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        self.call(Op::PivotRoot(new_root.into(), put_old.into()))
    }
}

const STAGING: &str = "/var/lib/stockade/sandboxes/abc/root";

fn spec() -> SandboxSpec {
    crate::test_spec::spec(STAGING)
}

fn staged(rel: &str) -> PathBuf {
    Path::new(STAGING).join(rel)
}

fn built(spec: &SandboxSpec, k: &mut Recorder, lowers: Lowers) {
    build_with(k, spec, lowers).unwrap_or_else(|e| panic!("{e}: {:#?}", k.ops));
}

#[test]
fn the_host_root_is_made_private_before_anything_is_mounted() {
    let mut k = Recorder::debian();
    built(&spec(), &mut k, Vec::new());
    assert_eq!(
        k.ops[0],
        Op::Mount(
            None,
            "/".into(),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None
        )
    );
}

#[test]
fn every_mount_before_the_pivot_lands_under_the_staging_root() {
    let mut k = Recorder::debian();
    built(&spec(), &mut k, Vec::new());
    let pivot = k.position(|op| matches!(op, Op::PivotRoot(..)));
    for op in &k.ops[1..pivot] {
        let target = match op {
            Op::Mount(_, t, ..) | Op::Setattr(t, ..) | Op::Move(_, t) | Op::Mkdir(t) => t,
            Op::File(t) | Op::Symlink(_, t) | Op::Umount(t) => t,
            _ => continue,
        };
        assert!(target.starts_with(STAGING), "{op:?} outside the new root");
    }
}

#[test]
fn the_pivot_enters_the_new_root_and_detaches_the_old_one() {
    let mut s = spec();
    s.ro_binds.push(BindMount {
        src: "/srv/data".into(),
        dst: "/mnt/data".into(),
    });
    let mut k = Recorder::debian();
    built(&s, &mut k, Vec::new());
    let pivots: Vec<usize> = (0..k.ops.len())
        .filter(|&i| matches!(k.ops[i], Op::PivotRoot(..)))
        .collect();
    assert_eq!(pivots.len(), 1, "{:#?}", k.ops);
    let p = pivots[0];
    // From inside the new root: `pivot_root(".", ".")` stacks the old root
    // on `.`, which is then detached, and `/` entered.
    assert_eq!(
        k.ops[p - 1..p + 3],
        [
            Op::Chdir(STAGING.into()),
            Op::PivotRoot(".".into(), ".".into()),
            Op::Umount(".".into()),
            Op::Chdir("/".into()),
        ]
    );
    // Every filesystem is mounted before it; what follows (the user's
    // binds, the root made read-only) names paths as the sandbox sees
    // them, never the staging directory.
    for op in &k.ops[p + 3..] {
        let target = match op {
            Op::Mount(..) => panic!("{op:?} after the pivot"),
            Op::Setattr(t, ..) | Op::Move(_, t) | Op::Mkdir(t) | Op::File(t) => t,
            other => panic!("unexpected {other:?} after the pivot"),
        };
        assert!(
            target.is_absolute() && !target.starts_with(STAGING),
            "{op:?}"
        );
    }
}

#[test]
fn system_directories_are_bound_read_only_and_symlinks_recreated() {
    let mut k = Recorder::debian();
    built(&spec(), &mut k, Vec::new());
    let usr = staged("usr");
    assert!(k.ops.contains(&Op::Mount(
        Some("/usr".into()),
        usr.clone(),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None
    )));
    assert_eq!(
        k.setattr_of(usr.to_str().unwrap()),
        [(
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            true
        )]
    );
    assert!(k
        .ops
        .contains(&Op::Symlink("usr/bin".into(), staged("bin"))));
    // A directory the host lacks is neither made nor mounted.
    assert!(!k
        .ops
        .iter()
        .any(|op| matches!(op, Op::Mkdir(p) if p == &staged("lib32"))));
    // The generated /etc, read-only too.
    let etc = staged("etc");
    assert!(k.ops.contains(&Op::Mount(
        Some(spec().etc_dir),
        etc.clone(),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None
    )));
    assert_eq!(k.setattr_of(etc.to_str().unwrap()), [(RO, true)]);
}

#[test]
fn writable_places_are_nosuid_and_nodev_and_the_root_ends_read_only() {
    let mut k = Recorder::debian();
    built(&spec(), &mut k, Vec::new());
    for rel in ["workspace", "home/agent"] {
        assert_eq!(
            k.setattr_of(staged(rel).to_str().unwrap()),
            [(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, true)],
            "{rel}"
        );
    }
    // Without --root, /root is an empty directory, not the home.
    assert!(k.setattr_of(staged("root").to_str().unwrap()).is_empty());
    let mounts = k.mounts();
    let tmp = mounts.iter().find(|m| m.1 == staged("tmp")).unwrap();
    assert_eq!(tmp.2.as_deref(), Some("tmpfs"));
    assert!(tmp.3.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
    let proc = mounts.iter().find(|m| m.1 == staged("proc")).unwrap();
    assert_eq!(proc.2.as_deref(), Some("proc"));
    assert!(proc
        .3
        .contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC));
    // The last word: the tmpfs root itself becomes read-only, after the pivot.
    assert_eq!(
        k.ops.last(),
        Some(&Op::Setattr("/".into(), MOUNT_ATTR_RDONLY, false))
    );
}

#[test]
fn dev_gets_bound_nodes_and_ends_read_only_and_noexec() {
    let mut k = Recorder::debian();
    built(&spec(), &mut k, Vec::new());
    let dev = staged("dev");
    let null = dev.join("null");
    let file = k.position(|op| op == &Op::File(null.clone()));
    let bound = k.position(
        |op| matches!(op, Op::Mount(Some(s), t, ..) if s == Path::new("/dev/null") && t == &null),
    );
    assert!(file < bound, "the mount point is made before the bind");
    let attrs = k.setattr_of(dev.to_str().unwrap());
    assert_eq!(
        attrs,
        [
            (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, true),
            (MOUNT_ATTR_RDONLY, false)
        ]
    );
    // devpts and shm are mounted between the two, with their own flags.
    let pts = k.position(
        |op| matches!(op, Op::Mount(_, t, Some(f), ..) if f == "devpts" && t == &dev.join("pts")),
    );
    let ro = k.position(|op| op == &Op::Setattr(dev.clone(), MOUNT_ATTR_RDONLY, false));
    assert!(pts < ro);
}

#[test]
fn user_binds_are_attached_after_the_pivot_at_paths_inside() {
    let mut s = spec();
    s.ro_binds.push(BindMount {
        src: "/srv/data".into(),
        dst: "/mnt/data".into(),
    });
    s.binds.push(BindMount {
        src: "/srv/notes.txt".into(),
        dst: "/mnt/out/notes.txt".into(),
    });
    let mut k = Recorder::debian();
    built(&s, &mut k, Vec::new());
    let pivot = k.position(|op| matches!(op, Op::PivotRoot(..)));
    // Sources are cloned before the pivot, while host paths resolve...
    let clone = k.position(|op| op == &Op::Clone("/srv/data".into()));
    assert!(clone < pivot);
    // ...and attached after it, at the destination as the sandbox sees it.
    let attach_dir = k.position(|op| op == &Op::Move("/srv/data".into(), "/mnt/data".into()));
    assert!(attach_dir > pivot);
    assert!(k.ops[pivot..].contains(&Op::Mkdir("/mnt/data".into())));
    assert_eq!(k.setattr_of("/mnt/data"), [(RO, true)]);
    // A file: its parent directory and an empty file to mount onto.
    let f = k.position(|op| op == &Op::File("/mnt/out/notes.txt".into()));
    assert!(f > pivot);
    assert!(k.ops[pivot..].contains(&Op::Mkdir("/mnt/out".into())));
    assert_eq!(k.setattr_of("/mnt/out/notes.txt"), [(RW, true)]);
}

#[test]
fn trees_sent_by_the_supervisor_are_used_instead_of_host_paths() {
    let mut s = spec();
    s.binds.push(BindMount {
        src: "/srv/rw".into(),
        dst: "/mnt/rw".into(),
    });
    let mut k = Recorder::debian();
    let ws = k.tree("idmapped workspace", true);
    let b = k.tree("idmapped bind", true);
    built(
        &s,
        &mut k,
        vec![(WORKSPACE_TREE.into(), ws), (bind_tree_name(0), b)],
    );
    assert!(k
        .ops
        .contains(&Op::Move("idmapped workspace".into(), staged("workspace"))));
    assert!(k
        .ops
        .contains(&Op::Move("idmapped bind".into(), "/mnt/rw".into())));
    // Neither host path is mounted or cloned itself.
    assert!(!k
        .ops
        .iter()
        .any(|op| matches!(op, Op::Mount(Some(p), ..) if p == &s.workspace)));
    assert!(!k.ops.contains(&Op::Clone("/srv/rw".into())));
}

#[test]
fn a_failed_step_names_itself_and_stops_the_build_before_the_pivot() {
    let mut k = Recorder::debian();
    k.fail_at = Some(staged("proc"));
    let err = build_with(&mut k, &spec(), Vec::new()).unwrap_err();
    // The directory was made; the mount on it failed.
    assert_eq!(err.what, "cannot mount filesystem on");
    assert_eq!(err.path, staged("proc").display().to_string());
    assert_eq!(err.source, nix::errno::Errno::EPERM);
    assert!(!k.ops.iter().any(|op| matches!(op, Op::PivotRoot(..))));
    assert!(!k
        .ops
        .iter()
        .any(|op| matches!(op, Op::Mount(_, t, ..) if t == &staged("dev"))));
}

#[test]
fn root_gets_the_home_with_as_root() {
    let mut s = spec();
    s.as_root = true;
    let mut k = Recorder::debian();
    built(&s, &mut k, Vec::new());
    assert!(k.ops.contains(&Op::Mount(
        Some(s.home.clone()),
        staged("root"),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None
    )));
}

#[test]
fn a_copy_on_write_root_overlays_without_naming_host_paths() {
    let mut s = spec();
    s.overlay = Some("/run/stockade-scratch/s1/overlay".into());
    let mut k = Recorder::debian();
    // As `overlay_lowers` asks the supervisor: /usr and the generated
    // /etc (lib64 is left out here, to see the fallback).
    let usr = k.tree("idmapped /usr", true);
    let etc = k.tree("idmapped /etc", true);
    built(&s, &mut k, vec![("usr".into(), usr), ("etc".into(), etc)]);
    let overlays: Vec<_> = k
        .mounts()
        .into_iter()
        .filter(|m| m.2.as_deref() == Some("overlay"))
        .collect();
    let targets: Vec<_> = overlays.iter().map(|m| m.1.clone()).collect();
    for rel in [
        "usr",
        "lib64",
        "var/lib/dpkg",
        "var/lib/apt",
        "var/cache/apt",
        "etc",
    ] {
        assert!(
            targets.contains(&staged(rel)),
            "{rel} not overlaid: {targets:?}"
        );
    }
    for m in &overlays {
        let data = m.4.as_deref().unwrap();
        assert!(
            !data.contains("/run/") && !data.contains("/var/lib/stockade"),
            "{data}"
        );
        assert!(data.contains("userxattr"), "{data}");
        assert!(m.3.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
    }
    // /usr's lower layer is the idmapped tree the supervisor sent, lib64's
    // the host directory (none was sent for it).
    let usr_data = overlays
        .iter()
        .find(|m| m.1 == staged("usr"))
        .unwrap()
        .4
        .clone()
        .unwrap();
    assert!(
        usr_data.starts_with("lowerdir=.stockade-lower/usr,"),
        "{usr_data}"
    );
    let lib64 = overlays
        .iter()
        .find(|m| m.1 == staged("lib64"))
        .unwrap()
        .4
        .clone()
        .unwrap();
    assert!(lib64.starts_with("lowerdir=/lib64,"), "{lib64}");
    // The helper mounts are gone before the workspace is mounted, and the
    // root stays writable (it is the copy-on-write one).
    let ws = k.position(|op| op == &Op::Mkdir(staged("workspace")));
    for helper in [OV_DIR, LOWER_DIR] {
        let gone = k.position(|op| op == &Op::Umount(staged(helper)));
        assert!(gone < ws, "{helper}");
    }
    assert!(k.setattr_of("/").is_empty());
    // Overlay layers are named relative to the new root: init works there.
    assert!(k.ops.contains(&Op::Chdir(STAGING.into())));
}

#[test]
fn an_ordinary_users_fuse_overlays_are_bound_instead_of_kernel_overlays() {
    let mut s = spec();
    s.overlay = Some("/run/stockade-scratch/s1/overlay".into());
    let mut k = Recorder::debian();
    let usr = k.tree("fuse /usr", true);
    let dpkg = k.tree("fuse /var/lib/dpkg", true);
    let etc = k.tree("fuse /etc", true);
    built(
        &s,
        &mut k,
        vec![
            (crate::fuseov::tree_name("usr"), usr),
            (crate::fuseov::tree_name("var_lib_dpkg"), dpkg),
            (crate::fuseov::tree_name("etc"), etc),
        ],
    );
    let mounts = k.mounts();
    for (rel, flat) in [
        ("usr", "usr"),
        ("var/lib/dpkg", "var_lib_dpkg"),
        ("etc", "etc"),
    ] {
        let m = mounts
            .iter()
            .find(|m| m.1 == staged(rel))
            .unwrap_or_else(|| panic!("{rel} not mounted: {mounts:?}"));
        assert!(m.3.contains(MsFlags::MS_BIND), "{rel}: {m:?}");
        assert_eq!(
            m.0.as_deref(),
            Some(
                staged(LOWER_DIR)
                    .join(crate::fuseov::tree_name(flat))
                    .as_path()
            ),
            "{rel}"
        );
        assert_eq!(
            k.setattr_of(staged(rel).to_str().unwrap()),
            [(RW, true)],
            "{rel}"
        );
    }
    // What no tree was sent for is a kernel overlay still.
    assert!(mounts
        .iter()
        .any(|m| m.1 == staged("var/lib/apt") && m.2.as_deref() == Some("overlay")));
    assert!(!mounts
        .iter()
        .any(|m| m.1 == staged("usr") && m.2.as_deref() == Some("overlay")));
}

/// Where a failure of `op` is reported: its own path, except for the
/// steps of the pivot, which report the new root, `new_root`.
fn reported_path_in(op: &Op, new_root: &Path) -> PathBuf {
    let pivot_step = match op {
        Op::PivotRoot(..) => true,
        Op::Umount(p) => p == Path::new("."),
        Op::Chdir(p) => p == Path::new("/"),
        _ => false,
    };
    if pivot_step {
        return new_root.into();
    }
    match op {
        Op::Mkdir(p)
        | Op::File(p)
        | Op::Remove(p)
        | Op::Umount(p)
        | Op::Chdir(p)
        | Op::Clone(p) => p.clone(),
        Op::Symlink(_, p) | Op::Mount(_, p, ..) | Op::Setattr(p, ..) | Op::Move(_, p) => p.clone(),
        Op::PivotRoot(..) => unreachable!(),
    }
}

/// Builds the sandbox `setup` gives once for every operation that can
/// fail, that one failing: the build must stop right there with an error
/// naming the path, except where a failure is allowed (sysfs).
fn each_failure_stops_the_build(setup: impl Fn() -> (Recorder, SandboxSpec, Lowers)) {
    each_failure_stops_the_build_in(Path::new(STAGING), setup)
}

/// [`each_failure_stops_the_build`] when the new root is `new_root`.
fn each_failure_stops_the_build_in(
    new_root: &Path,
    setup: impl Fn() -> (Recorder, SandboxSpec, Lowers),
) {
    let (mut k, s, lowers) = setup();
    built(&s, &mut k, lowers);
    let steps = k.calls;
    let mut tolerated = Vec::new();
    for n in 0..steps {
        let (mut k, s, lowers) = setup();
        k.fail_call = Some(n);
        let r = build_with(&mut k, &s, lowers);
        let failed = k.failed.clone().expect("the step was reached");
        if matches!(&failed, Op::Mount(_, _, Some(fs), ..) if fs == "sysfs") {
            // Allowed to fail: the kernel refuses sysfs where the host's
            // is not fully visible, and /sys then stays an empty directory.
            r.unwrap_or_else(|e| panic!("a failed sysfs mount stopped the build: {e}"));
            assert!(k.ops.iter().any(|op| matches!(op, Op::PivotRoot(..))));
            tolerated.push(failed);
            continue;
        }
        let err = r
            .err()
            .unwrap_or_else(|| panic!("{failed:?} failed, yet the build went on"));
        assert_eq!(
            k.calls,
            n + 1,
            "{failed:?} failed, yet the build went on: {:#?}",
            &k.ops[k.ops.len().min(n + 1)..]
        );
        assert_eq!(k.ops.last(), Some(&failed));
        assert_eq!(err.source, nix::errno::Errno::EPERM, "{failed:?}");
        assert_eq!(
            err.path,
            reported_path_in(&failed, new_root).display().to_string(),
            "{failed:?}: {err}"
        );
        assert!(err.to_string().starts_with(err.what), "{err}");
    }
    assert_eq!(tolerated.len(), 1, "{tolerated:?}");
}

#[test]
fn every_failed_step_of_a_plain_root_stops_the_build_and_names_its_path() {
    each_failure_stops_the_build(|| {
        let mut s = spec();
        s.as_root = true;
        s.ro_binds.push(BindMount {
            src: "/srv/data".into(),
            dst: "/mnt/data".into(),
        });
        s.binds.push(BindMount {
            src: "/srv/notes.txt".into(),
            dst: "/mnt/out/notes.txt".into(),
        });
        (Recorder::debian(), s, Vec::new())
    });
}

#[test]
fn every_failed_step_of_a_copy_on_write_root_stops_the_build_and_names_its_path() {
    each_failure_stops_the_build(|| {
        let mut s = spec();
        s.overlay = Some("/run/stockade-scratch/s1/overlay".into());
        s.binds.push(BindMount {
            src: "/srv/rw".into(),
            dst: "/mnt/rw".into(),
        });
        let mut k = Recorder::debian();
        let lowers = vec![
            ("usr".to_string(), k.tree("idmapped /usr", true)),
            ("etc".to_string(), k.tree("idmapped /etc", true)),
            (WORKSPACE_TREE.to_string(), k.tree("workspace", true)),
            (bind_tree_name(0), k.tree("bind", true)),
        ];
        (k, s, lowers)
    });
}

#[test]
fn a_refused_sysfs_leaves_sys_empty_and_the_build_goes_on() {
    let mut k = Recorder::debian();
    k.fail_at = Some(staged("sys"));
    built(&spec(), &mut k, Vec::new());
    assert!(k.ops.contains(&Op::Mkdir(staged("sys"))));
    assert!(!k
        .ops
        .iter()
        .any(|op| matches!(op, Op::Mount(_, t, ..) if t == &staged("sys"))));
    assert_eq!(
        k.ops.last(),
        Some(&Op::Setattr("/".into(), MOUNT_ATTR_RDONLY, false))
    );
}

#[test]
fn the_supervisor_sends_a_lower_layer_for_each_directory_the_builder_overlays() {
    let mut s = spec();
    s.overlay = Some("/run/stockade-scratch/s1/overlay".into());
    let lowers = overlay_lowers_with(&mut Recorder::debian(), &s);
    let names: Vec<&str> = lowers.iter().map(|(n, _)| n.as_str()).collect();
    // Real directories only: merged /usr's symlinks are not followed (the
    // builder recreates them), and what the host lacks is left out.
    assert_eq!(
        names,
        [
            "usr",
            "lib64",
            "var_lib_dpkg",
            "var_lib_apt",
            "var_cache_apt",
            "var_cache_debconf",
            "etc"
        ]
    );
    assert_eq!(lowers[6].1, s.etc_dir);
    let mut k = Recorder::debian();
    let trees = lowers
        .iter()
        .map(|(n, host)| {
            (
                n.clone(),
                k.tree(&format!("idmapped {}", host.display()), true),
            )
        })
        .collect();
    built(&s, &mut k, trees);
    for (name, host) in &lowers {
        assert!(
            k.ops.contains(&Op::Move(
                format!("idmapped {}", host.display()),
                staged(LOWER_DIR).join(name)
            )),
            "{name} not attached"
        );
    }
    // With every layer sent, no overlay has a host path as its lower layer.
    let overlays: Vec<_> = k
        .mounts()
        .into_iter()
        .filter(|m| m.2.as_deref() == Some("overlay"))
        .collect();
    assert_eq!(overlays.len(), lowers.len());
    for m in &overlays {
        let data = m.4.as_deref().unwrap();
        assert!(
            data.starts_with(&format!("lowerdir={LOWER_DIR}/")),
            "{data}"
        );
    }
    assert!(k
        .ops
        .contains(&Op::Symlink("usr/lib".into(), staged("lib"))));
    // The layers are named relative to the new root, entered first.
    let entered = k.position(|op| op == &Op::Chdir(STAGING.into()));
    let first = k.position(|op| matches!(op, Op::Mount(_, _, Some(f), ..) if f == "overlay"));
    assert!(entered < first);
}

/// The fakes answer as [`Kernel`] is taken to: checked here on a
/// temporary directory, for the operations that need no privilege.
#[test]
fn the_kernel_ops_answer_as_the_builder_assumes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut k = Kernel;
    // mkdir -p, with the mode asked for (the umask may only take bits).
    let deep = d.join("a/b/c");
    k.mkdir_all(&deep, 0o700).unwrap();
    k.mkdir_all(&deep, 0o700).unwrap();
    let mode = std::fs::metadata(&deep).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode & !0o700, 0, "{mode:o}");
    // A mount point for a file: made once, and one that exists is fine.
    let f = d.join("file");
    k.make_file(&f).unwrap();
    k.make_file(&f).unwrap();
    assert!(std::fs::metadata(&f).unwrap().is_file());
    // What a path is, without following a symlink.
    k.symlink(Path::new("a"), &d.join("link")).unwrap();
    assert_eq!(k.host_kind(&d.join("a")), Some(HostKind::Dir));
    assert_eq!(
        k.host_kind(&d.join("link")),
        Some(HostKind::Symlink("a".into()))
    );
    assert_eq!(k.host_kind(&f), Some(HostKind::Other));
    assert_eq!(k.host_kind(&d.join("missing")), None);
    assert!(k.is_real_dir(&d.join("a")));
    assert!(!k.is_real_dir(&d.join("link")), "a symlink to a directory");
    assert!(!k.is_real_dir(&f));
    // remove_dir removes an empty directory and leaves a full one.
    k.remove_dir(&d.join("a/b/c"));
    assert!(!d.join("a/b/c").exists());
    k.remove_dir(&d.join("a"));
    assert!(d.join("a/b").exists());
}

/// A sandbox on an image of three layers, with a writable bind, as root;
/// the trees the supervisor sends for it.
fn image_sandbox() -> (Recorder, SandboxSpec, Lowers) {
    let mut s = spec();
    s.as_root = true;
    s.overlay = Some("/run/stockade-scratch/s1/overlay".into());
    s.image = Some(crate::spec::ImageRoot {
        layers: (0..3)
            .map(|i| PathBuf::from(format!("/var/lib/stockade/images/layers/l{i}")))
            .collect(),
        idmap: crate::spec::MountIdmap {
            uids: crate::idmap::disk_map(3_000_000_000, None),
            gids: crate::idmap::disk_map(3_000_000_000, None),
        },
    });
    s.binds.push(BindMount {
        src: "/srv/rw".into(),
        dst: "/mnt/rw".into(),
    });
    let mut k = Recorder::debian();
    let mut lowers: Lowers = (0..3)
        .map(|i| (format!("img{i}"), k.tree(&format!("layer {i}"), true)))
        .collect();
    lowers.push((WORKSPACE_TREE.to_string(), k.tree("workspace", true)));
    lowers.push((bind_tree_name(0), k.tree("bind", true)));
    (k, s, lowers)
}

#[test]
fn an_image_root_is_an_overlay_of_its_layers_named_without_host_paths() {
    let (mut k, s, lowers) = image_sandbox();
    built(&s, &mut k, lowers);
    let nr = staged("root");
    // A small private tmpfs holds the layers, top to bottom in the
    // overlay's options, and a view of the sandbox's upper.
    let tmpfs = k.position(|op| {
        matches!(op, Op::Mount(_, t, Some(fs), ..) if t == Path::new(STAGING) && fs == "tmpfs")
    });
    for i in 0..3 {
        let at = k.position(|op| op == &Op::Move(format!("layer {i}"), staged(&format!("img{i}"))));
        assert!(at > tmpfs);
    }
    let view = k.position(|op| {
        op == &Op::Mount(
            Some("/run/stockade-scratch/s1/overlay".into()),
            staged("ov"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
    });
    let enter = k.position(|op| op == &Op::Chdir(STAGING.into()));
    let overlays: Vec<_> = k
        .mounts()
        .into_iter()
        .filter(|m| m.2.as_deref() == Some("overlay"))
        .collect();
    assert_eq!(overlays.len(), 1, "{overlays:#?}");
    let (_, target, _, flags, data) = &overlays[0];
    assert_eq!(target, &nr);
    assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
    assert_eq!(
        data.as_deref(),
        Some("lowerdir=img2:img1:img0,upperdir=ov/upper,workdir=ov/work,userxattr")
    );
    let mounted =
        k.position(|op| matches!(op, Op::Mount(_, t, Some(fs), ..) if t == &nr && fs == "overlay"));
    assert!(view < enter && enter < mounted);
    // No host system directory and no generated /etc directory: only the
    // three files that describe the sandbox's host and network, read-only.
    for m in k.mounts() {
        let src = m.0.as_deref().map(Path::to_path_buf).unwrap_or_default();
        assert!(
            !["/usr", "/lib64", "/bin", "/var/lib/dpkg"]
                .iter()
                .any(|h| src == Path::new(h)),
            "host directory mounted: {m:?}"
        );
        assert_ne!(src, s.etc_dir, "the whole generated /etc was bound");
    }
    for name in ["hosts", "hostname", "resolv.conf"] {
        let dst = nr.join("etc").join(name);
        let bound = k.position(|op| {
            op == &Op::Mount(
                Some(s.etc_dir.join(name)),
                dst.clone(),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
        });
        assert!(k.position(|op| op == &Op::File(dst.clone())) < bound);
        assert_eq!(
            k.setattr_of(dst.to_str().unwrap()),
            [(
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                true
            )]
        );
    }
    // The sandbox's own mounts go inside the overlay, then it becomes the
    // root; the root stays writable (copy-on-write) and no /var is made.
    for rel in [
        "workspace",
        "home/agent",
        "root",
        "tmp",
        "proc",
        "dev",
        "sys",
    ] {
        assert!(k.ops.contains(&Op::Mkdir(nr.join(rel))), "{rel}");
    }
    assert!(!k
        .ops
        .iter()
        .any(|op| matches!(op, Op::Mkdir(p) if p.starts_with(nr.join("var")))));
    let pivot = k.position(|op| matches!(op, Op::PivotRoot(..)));
    assert_eq!(k.ops[pivot - 1], Op::Chdir(nr.clone()));
    assert!(k.setattr_of("/").is_empty());
    assert!(k.ops[pivot..].contains(&Op::Move("bind".into(), "/mnt/rw".into())));
    assert!(s.writable_paths().contains(&PathBuf::from("/")));
}

#[test]
fn an_image_root_never_overlays_the_hosts_directories() {
    let (_, s, _) = image_sandbox();
    assert!(overlay_lowers_with(&mut Recorder::debian(), &s).is_empty());
}

#[test]
fn a_symlink_where_stockade_mounts_in_an_image_is_refused_before_it_is_followed() {
    for rel in [
        "home",
        "home/agent",
        "tmp",
        "proc",
        "dev",
        "etc",
        "workspace",
        "root",
    ] {
        let (mut k, s, lowers) = image_sandbox();
        k.host
            .insert(staged("root").join(rel), HostKind::Symlink("/tmp".into()));
        let e = build_with(&mut k, &s, lowers).unwrap_err();
        assert_eq!(e.source, nix::errno::Errno::ELOOP, "{rel}");
        assert_eq!(e.path, format!("/{rel}"));
        assert!(e.to_string().contains("symlink"), "{e}");
        // Nothing was made or mounted inside the image's root.
        let nr = staged("root");
        assert!(
            !k.ops.iter().any(|op| match op {
                Op::Mkdir(p) | Op::File(p) | Op::Mount(_, p, ..) => p.starts_with(&nr) && p != &nr,
                _ => false,
            }),
            "{rel}: {:#?}",
            k.ops
        );
    }
}

#[test]
fn an_images_symlinked_resolv_conf_is_replaced_not_followed() {
    let (mut k, s, lowers) = image_sandbox();
    let conf = staged("root/etc/resolv.conf");
    k.host.insert(
        conf.clone(),
        HostKind::Symlink("../run/systemd/resolve/stub-resolv.conf".into()),
    );
    built(&s, &mut k, lowers);
    let removed = k.position(|op| op == &Op::Remove(conf.clone()));
    let made = k.position(|op| op == &Op::File(conf.clone()));
    let bound = k.position(|op| matches!(op, Op::Mount(_, t, ..) if t == &conf));
    assert!(removed < made && made < bound);
    // A directory there is refused.
    let (mut k, s, lowers) = image_sandbox();
    k.host.insert(staged("root/etc/hosts"), HostKind::Dir);
    let e = build_with(&mut k, &s, lowers).unwrap_err();
    assert_eq!(e.source, nix::errno::Errno::EISDIR);
}

#[test]
fn an_image_root_without_all_its_layers_or_with_too_many_is_refused() {
    let (mut k, s, mut lowers) = image_sandbox();
    lowers.retain(|(n, _)| n != "img1");
    let e = build_with(&mut k, &s, lowers).unwrap_err();
    assert_eq!(e.source, nix::errno::Errno::ENOENT);
    assert_eq!(e.path, staged("img1").display().to_string());
    assert!(!k.ops.iter().any(|op| matches!(op, Op::PivotRoot(..))));

    let (mut k, mut s, lowers) = image_sandbox();
    if let Some(img) = &mut s.image {
        img.layers = vec![PathBuf::from("/l"); crate::spec::MAX_IMAGE_LAYERS + 1];
    }
    let e = build_with(&mut k, &s, lowers).unwrap_err();
    assert!(e.to_string().contains("120 layers"), "{e}");
    // Only the mounts were made private: nothing else happened.
    assert_eq!(k.ops.len(), 1);

    // The largest image allowed fits in one page of mount options.
    let (mut k, mut s, _) = image_sandbox();
    let n = crate::spec::MAX_IMAGE_LAYERS;
    if let Some(img) = &mut s.image {
        img.layers = vec![PathBuf::from("/l"); n];
    }
    let lowers: Lowers = (0..n)
        .map(|i| (format!("img{i}"), k.tree(&format!("layer {i}"), true)))
        .collect();
    built(&s, &mut k, lowers);
    let data = k
        .mounts()
        .into_iter()
        .find(|m| m.2.as_deref() == Some("overlay"))
        .and_then(|m| m.4)
        .unwrap();
    assert!(data.len() < 4096, "{} bytes", data.len());
}

#[test]
fn every_failed_step_of_an_image_root_stops_the_build_and_names_its_path() {
    each_failure_stops_the_build_in(&staged("root"), || {
        let (mut k, s, lowers) = image_sandbox();
        // One file replaced, so that its removal is a step too.
        k.host.insert(
            staged("root/etc/hosts"),
            HostKind::Symlink("/etc/alt-hosts".into()),
        );
        (k, s, lowers)
    });
}

#[test]
fn debconf_s_password_store_is_shadowed_by_an_empty_upper_file() {
    let mut s = spec();
    s.overlay = Some("/run/stockade-scratch/s1/overlay".into());
    let mut k = Recorder::debian();
    built(&s, &mut k, vec![]);
    let upper_file = staged(OV_DIR)
        .join("upper")
        .join("var_cache_debconf")
        .join("passwords.dat");
    let made = k.position(|op| op == &Op::File(upper_file.clone()));
    let mounted = k.position(
        |op| matches!(op, Op::Mount(_, t, Some(f), ..) if f == "overlay" && t == &staged("var/cache/debconf")),
    );
    assert!(
        made < mounted,
        "the shadow must exist before the overlay is mounted"
    );
    // No other overlay gets one.
    let shadows = k
        .ops
        .iter()
        .filter(|op| matches!(op, Op::File(p) if p.starts_with(staged(OV_DIR))))
        .count();
    assert_eq!(shadows, 1);
}

#[test]
fn a_rootless_image_root_binds_its_layers_as_they_are() {
    // Rootless, the supervisor sends no trees: the user's store already
    // holds the owners as the sandbox's map reads them.
    let (mut k, mut s, _) = image_sandbox();
    s.rootless = Some(crate::rootless::RootlessIds::Subordinate {
        uids: crate::rootless::SubRange {
            start: 100_000,
            count: 65_536,
        },
        gids: crate::rootless::SubRange {
            start: 100_000,
            count: 65_536,
        },
    });
    built(&s, &mut k, Vec::new());
    let overlay = k.position(
        |op| matches!(op, Op::Mount(_, t, Some(fs), ..) if t == &staged("root") && fs == "overlay"),
    );
    for i in 0..3 {
        let src = PathBuf::from(format!("/var/lib/stockade/images/layers/l{i}"));
        let at = k.position(|op| {
            op == &Op::Mount(
                Some(src.clone()),
                staged(&format!("img{i}")),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
        });
        assert!(at < overlay);
    }
    // No layer tree was moved in (root's sandbox without its trees is
    // still refused, tested above).
    assert!(!k
        .ops
        .iter()
        .any(|op| matches!(op, Op::Move(t, _) if t.starts_with("layer"))));
}
