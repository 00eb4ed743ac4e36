//! Many clients at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::harness::{eventually, exclusive, TestDaemon};
use stockade_client::ExecOptions;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn fifty_concurrent_clients_create_exec_and_destroy_without_errors_or_leaks() {
    let _g = exclusive();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(tmp.path());
    // Warm up (runtime threads, database pages) before counting.
    let c = d.client();
    let sb = c.create(None, None, &BTreeMap::new(), None).unwrap();
    c.exec(
        &sb.id,
        &ExecOptions {
            cmd: vec!["true".into()],
            ..Default::default()
        },
    )
    .unwrap();
    c.destroy(&sb.id).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let fds_before = open_fds();

    let deadline = Instant::now() + Duration::from_secs(8);
    let rounds = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..50)
        .map(|i| {
            let c = d.client();
            let rounds = rounds.clone();
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    let labels = BTreeMap::from([("worker".to_string(), i.to_string())]);
                    let sb = c.create(None, None, &labels, Some("10m")).expect("create");
                    let opts = ExecOptions {
                        cmd: vec!["sh".into(), "-c".into(), "echo $0".into(), sb.id.clone()],
                        ..Default::default()
                    };
                    let r = c.exec(&sb.id, &opts).expect("exec");
                    assert_eq!(r.stdout, format!("{}\n", sb.id));
                    c.write_file(&sb.id, "/workspace/f", sb.id.as_bytes())
                        .expect("write");
                    assert_eq!(
                        c.read_file(&sb.id, "/workspace/f").expect("read"),
                        sb.id.as_bytes()
                    );
                    let gone = c.destroy(&sb.id).expect("destroy");
                    assert_eq!(gone.state, "destroyed");
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a worker failed");
    }
    let n = rounds.load(Ordering::Relaxed);
    assert!(n >= 50, "only {n} rounds completed");
    assert!(
        c.list(&[], Some("running")).unwrap().is_empty(),
        "sandboxes left running"
    );
    assert!(d.fake.alive().is_empty());
    let fds_after = eventually(10, || {
        let n = open_fds();
        (n <= fds_before).then_some(n)
    });
    assert!(
        fds_after <= fds_before,
        "{fds_before} fds before, {fds_after} after"
    );
}
