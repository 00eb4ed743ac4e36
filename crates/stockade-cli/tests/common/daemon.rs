//! A `stockade serve` of one test, on a socket in its state directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use stockade_client::Client;

use super::{eventually, rand_suffix, Env, BIN};

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    /// Destroy every sandbox it lists before stopping it.
    destroy_on_drop: bool,
}

impl Daemon {
    /// Starts the daemon with `extra` flags and waits until it answers.
    /// Sandboxes outlive it (as they outlive any daemon).
    pub fn start(env: &Env, extra: &[&str]) -> Daemon {
        Daemon::spawn(env, extra, Stdio::inherit())
    }

    /// Starts the daemon (destroying its sandboxes at the end) with its
    /// stderr read line by line into the returned channel.
    pub fn start_logged(env: &Env, extra: &[&str]) -> (Daemon, std::sync::mpsc::Receiver<String>) {
        let mut d = Daemon::spawn(env, extra, Stdio::piped());
        d.destroy_on_drop = true;
        let err = d.child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                eprintln!("daemon: {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (d, rx)
    }

    fn spawn(env: &Env, extra: &[&str], stderr: Stdio) -> Daemon {
        let socket = env.state.path().join(format!("api-{}.sock", rand_suffix()));
        let child = Command::new(BIN)
            .envs(env.vars.iter().map(|(k, v)| (k, v)))
            .args(["serve", "--socket", socket.to_str().unwrap(), "--state-dir"])
            .arg(env.state.path().join("state"))
            .args(extra)
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            socket,
            destroy_on_drop: false,
        };
        assert!(
            eventually(|| d.client().health().is_ok()),
            "daemon did not come up"
        );
        d
    }

    /// The same, destroying its sandboxes when the test ends.
    pub fn start_cleaning(env: &Env, extra: &[&str]) -> Daemon {
        let mut d = Daemon::start(env, extra);
        d.destroy_on_drop = true;
        d
    }

    pub fn client(&self) -> Client {
        Client::unix(&self.socket)
    }

    pub fn kill9(mut self) {
        self.destroy_on_drop = false;
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.destroy_on_drop {
            let c = self.client();
            if let Ok(list) = c.list(&[], None) {
                for sb in list {
                    let _ = c.destroy(&sb.id);
                }
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
