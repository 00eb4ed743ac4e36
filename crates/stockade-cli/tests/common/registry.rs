//! Real registries and test images for the image tests (issue 15).
//!
//! - [`images`] runs `tests/images/build.sh` once per test process (it is
//!   cached under `/var/cache/stockade-images` and locked, so concurrent
//!   test processes share one build) and returns the images' directory.
//! - [`Registry::plain`], [`Registry::auth`] and [`Registry::tls`] start
//!   Debian's `docker-registry` (Distribution 2.8) on 127.0.0.1, one of
//!   each kind per test process, with storage in a temporary directory:
//!   plain HTTP; HTTP with htpasswd basic auth ([`USER`]/[`PASSWORD`]);
//!   HTTPS with a server certificate signed by a CA the test makes
//!   ([`Registry::ca`]). The registry dies with the test process
//!   (`PR_SET_PDEATHSIG` on a thread that never ends) and its directory is
//!   removed at exit (and, if a process was killed, by the next one).
//! - [`Registry::push`] copies an OCI layout in with `skopeo`;
//!   [`Registry::push_raw`] with raw API calls (`tests/images/push.py`),
//!   for hostile images skopeo would refuse.
//!
//! Network: everything listens on and talks to 127.0.0.1 only.

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const USER: &str = "stockade";
pub const PASSWORD: &str = "s3cret-test-pass";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory of the built test images (see tests/images/build.sh),
/// building them first if needed (once per process).
pub fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("STOCKADE_IMAGES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/stockade-images"));
        let out = Command::new(repo_root().join("tests/images/build.sh"))
            .env("STOCKADE_IMAGES", &dir)
            .stdin(Stdio::null())
            .output()
            .expect("run tests/images/build.sh");
        assert!(
            out.status.success(),
            "tests/images/build.sh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// `images()/NAME`: an OCI layout (`busybox`, `debian-python`,
/// `hostile/bomb`, …) or file (`busybox.docker.tar`, `wheels`).
pub fn image(name: &str) -> PathBuf {
    images().join(name)
}

/// A port on 127.0.0.1 nothing listens on (for "unreachable registry").
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Plain,
    Auth,
    Tls,
}

pub struct Registry {
    pub kind: Kind,
    addr: String,
    dir: PathBuf,
    pid: i32,
    pushed: Mutex<HashSet<String>>,
}

/// Children and directories to clean up at exit.
static CLEANUP: Mutex<Vec<(i32, PathBuf)>> = Mutex::new(Vec::new());

extern "C" fn cleanup_at_exit() {
    let Ok(list) = CLEANUP.lock() else { return };
    for (pid, dir) in list.iter() {
        // SAFETY: kill(2) on a child this process started; waitpid reaps it.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
            libc::waitpid(*pid, std::ptr::null_mut(), 0);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes registry directories left by test processes that were killed.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("stockade-test-registry-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Registry {
    /// Anonymous, plain HTTP.
    pub fn plain() -> &'static Registry {
        static R: OnceLock<Registry> = OnceLock::new();
        R.get_or_init(|| Registry::start(Kind::Plain))
    }

    /// Plain HTTP, htpasswd basic auth: [`USER`] / [`PASSWORD`].
    pub fn auth() -> &'static Registry {
        static R: OnceLock<Registry> = OnceLock::new();
        R.get_or_init(|| Registry::start(Kind::Auth))
    }

    /// HTTPS (anonymous) with a certificate for IP 127.0.0.1 signed by the
    /// CA at [`Registry::ca`].
    pub fn tls() -> &'static Registry {
        static R: OnceLock<Registry> = OnceLock::new();
        R.get_or_init(|| Registry::start(Kind::Tls))
    }

    /// A registry of its own for one test (one that corrupts its
    /// storage): stopped and removed when dropped.
    pub fn new(kind: Kind) -> Registry {
        Registry::start(kind)
    }

    fn start(kind: Kind) -> Registry {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the registry tests need root (they build images under /var/cache)"
        );
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            remove_stale();
            // SAFETY: registers a plain extern "C" fn with no captured state.
            unsafe { libc::atexit(cleanup_at_exit) };
        });
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "stockade-test-registry-{}-{kind:?}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let mut extra = String::new();
        match kind {
            Kind::Plain => {}
            Kind::Auth => {
                let line = run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
                std::fs::write(dir.join("htpasswd"), line.trim_end().to_owned() + "\n").unwrap();
                extra = format!(
                    "auth:\n  htpasswd:\n    realm: stockade-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                );
            }
            Kind::Tls => {
                make_certs(&dir);
                extra = format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    dir.join("server/server.crt").display(),
                    dir.join("server/server.key").display()
                );
            }
        }
        // A free port can be taken between our probe and the registry's
        // bind: try a few.
        for _ in 0..5 {
            let port = closed_port();
            let addr = format!("127.0.0.1:{port}");
            let (http_extra, auth_extra) = match kind {
                Kind::Tls => (extra.as_str(), ""),
                _ => ("", extra.as_str()),
            };
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{http_extra}{auth_extra}",
                dir.join("storage").display()
            );
            let cfg = dir.join("config.yml");
            std::fs::write(&cfg, config).unwrap();
            let log = std::fs::File::create(dir.join("registry.log")).unwrap();
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            let pid = spawn_forever(cmd);
            CLEANUP.lock().unwrap().push((pid, dir.clone()));
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if !Path::new(&format!("/proc/{pid}")).exists() || zombie(pid) {
                    break;
                }
                if TcpStream::connect(&addr).is_ok() {
                    return Registry {
                        kind,
                        addr,
                        dir,
                        pid,
                        pushed: Mutex::new(HashSet::new()),
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        panic!(
            "docker-registry ({kind:?}) did not start: {}",
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `127.0.0.1:PORT/REPO_TAG`, the reference `stockade pull` takes.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// The CA certificate (PEM) that signed the TLS registry's certificate.
    pub fn ca(&self) -> PathBuf {
        assert_eq!(self.kind, Kind::Tls, "only the TLS registry has a CA");
        self.dir.join("certs/ca.crt")
    }

    /// The registry's storage root (Distribution's filesystem driver).
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// Where the registry keeps blob `sha256:HEX` (to corrupt it).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// A Docker-style auth file (`{"auths": {ADDR: {"auth": …}}}`) in
    /// DIR with the given credentials for this registry.
    pub fn auth_file(&self, dir: &Path, user: &str, password: &str) -> PathBuf {
        let token = b64(format!("{user}:{password}").as_bytes());
        let path = dir.join("auth.json");
        let json = serde_json::json!({"auths": {self.addr.clone(): {"auth": token}}});
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    /// Pushes the layout `layout:latest` (a name under [`images`] or a
    /// path) as `DEST` (`repo:tag`) with skopeo; returns the reference to
    /// pull. Pushing the same DEST twice in one process does nothing.
    pub fn push(&self, layout: &str, dest: &str) -> String {
        self.push_tag(layout, "latest", dest)
    }

    /// The same, for the layout's manifest tagged TAG.
    pub fn push_tag(&self, layout: &str, tag: &str, dest: &str) -> String {
        let mut pushed = self.pushed.lock().unwrap();
        if !pushed.contains(dest) {
            let src = self.layout_path(layout);
            let mut cmd = Command::new("skopeo");
            cmd.args(["copy", "-q", "--retry-times", "2"]);
            match self.kind {
                Kind::Plain => {
                    cmd.arg("--dest-tls-verify=false");
                }
                Kind::Auth => {
                    cmd.arg("--dest-tls-verify=false")
                        .arg("--dest-creds")
                        .arg(format!("{USER}:{PASSWORD}"));
                }
                Kind::Tls => {
                    cmd.arg("--dest-cert-dir").arg(self.dir.join("certs"));
                }
            }
            cmd.arg(format!("oci:{}:{tag}", src.display()))
                .arg(format!("docker://{}/{dest}", self.addr));
            run(&mut cmd);
            pushed.insert(dest.to_owned());
        }
        self.reference(dest)
    }

    /// Pushes `layout:latest` as DEST with raw API calls that check
    /// nothing (for hostile images); returns the reference to pull.
    pub fn push_raw(&self, layout: &str, dest: &str) -> String {
        let mut pushed = self.pushed.lock().unwrap();
        if !pushed.contains(dest) {
            let mut cmd = Command::new("/usr/bin/python3");
            cmd.arg(repo_root().join("tests/images/push.py"))
                .arg(self.layout_path(layout))
                .arg("latest")
                .arg(self.base_url())
                .arg(dest);
            match self.kind {
                Kind::Plain => {}
                Kind::Auth => {
                    cmd.arg("--creds").arg(format!("{USER}:{PASSWORD}"));
                }
                Kind::Tls => {
                    cmd.arg("--ca").arg(self.ca());
                }
            }
            run(&mut cmd);
            pushed.insert(dest.to_owned());
        }
        self.reference(dest)
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn base_url(&self) -> String {
        match self.kind {
            Kind::Tls => format!("https://{}", self.addr),
            _ => format!("http://{}", self.addr),
        }
    }

    /// `GET PATH` on the registry with curl (credentials and CA as this
    /// registry needs); returns the body.
    pub fn get(&self, path: &str) -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-sSf", "--max-time", "30"]);
        match self.kind {
            Kind::Plain => {}
            Kind::Auth => {
                cmd.arg("-u").arg(format!("{USER}:{PASSWORD}"));
            }
            Kind::Tls => {
                cmd.arg("--cacert").arg(self.ca());
            }
        }
        cmd.arg(format!("{}{path}", self.base_url()));
        run(&mut cmd)
    }

    /// The repositories the registry holds (`/v2/_catalog`).
    pub fn catalog(&self) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&self.get("/v2/_catalog")).unwrap();
        v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    }

    /// The digest of manifest REPO:TAG (its Docker-Content-Digest).
    pub fn manifest_digest(&self, repo_tag: &str) -> String {
        let (repo, tag) = repo_tag.split_once(':').unwrap_or((repo_tag, "latest"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sSfI", "--max-time", "30", "-H"])
            .arg("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json");
        self.curl_auth(&mut cmd);
        cmd.arg(format!("{}/v2/{repo}/manifests/{tag}", self.base_url()));
        let head = run(&mut cmd);
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no Docker-Content-Digest in {head}"))
    }

    fn curl_auth(&self, cmd: &mut Command) {
        match self.kind {
            Kind::Plain => {}
            Kind::Auth => {
                cmd.arg("-u").arg(format!("{USER}:{PASSWORD}"));
            }
            Kind::Tls => {
                cmd.arg("--cacert").arg(self.ca());
            }
        }
    }

    /// Manifest REPO:TAG as the registry serves it.
    pub fn manifest(&self, repo_tag: &str) -> serde_json::Value {
        let (repo, tag) = repo_tag.split_once(':').unwrap_or((repo_tag, "latest"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sSf", "--max-time", "30", "-H"])
            .arg("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json");
        match self.kind {
            Kind::Plain => {}
            Kind::Auth => {
                cmd.arg("-u").arg(format!("{USER}:{PASSWORD}"));
            }
            Kind::Tls => {
                cmd.arg("--cacert").arg(self.ca());
            }
        }
        cmd.arg(format!("{}/v2/{repo}/manifests/{tag}", self.base_url()));
        serde_json::from_str(&run(&mut cmd)).unwrap()
    }

    fn layout_path(&self, layout: &str) -> PathBuf {
        if layout.starts_with('/') {
            PathBuf::from(layout)
        } else {
            image(layout)
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child (reaped by the exit handler's
        // waitpid or by init once we exit).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts CMD from a thread that never ends, with PR_SET_PDEATHSIG set:
/// the child is killed when that thread (so, the test process) dies.
/// (PDEATHSIG follows the thread that forked, so a test's own thread,
/// which ends with the test, would not do.) Returns its pid.
fn spawn_forever(mut cmd: Command) -> i32 {
    // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("registry-parent".into())
        .spawn(move || {
            let child = cmd.spawn();
            let pid = child.as_ref().map(|c| c.id() as i32);
            tx.send(pid.map_err(|e| e.to_string())).unwrap();
            // Keep the child (and its PDEATHSIG) tied to a live thread.
            std::mem::forget(child);
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"))
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn make_certs(dir: &Path) {
    let certs = dir.join("certs");
    let server = dir.join("server");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&server).unwrap();
    let p = |d: &Path, f: &str| d.join(f).to_str().unwrap().to_owned();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p(&server, "ca.key"),
        "-out",
        &p(&certs, "ca.crt"),
        "-days",
        "3",
        "-subj",
        "/CN=stockade test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p(&server, "server.key"),
        "-out",
        &p(&server, "server.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]));
    std::fs::write(
        server.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p(&server, "server.csr"),
        "-CA",
        &p(&certs, "ca.crt"),
        "-CAkey",
        &p(&server, "ca.key"),
        "-CAcreateserial",
        "-out",
        &p(&server, "server.crt"),
        "-days",
        "3",
        "-extfile",
        &p(&server, "ext.cnf"),
    ]));
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
