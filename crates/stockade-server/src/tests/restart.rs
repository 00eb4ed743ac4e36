//! A daemon restart: sandboxes are found again, dead ones are marked.

use std::collections::BTreeMap;

use super::harness::{shared, TestDaemon};
use crate::testing::FakeBackend;
use stockade_client::ExecOptions;

#[test]
fn restart_reattaches_running_sandboxes_and_marks_dead_ones() {
    let _g = shared();
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeBackend::new(tmp.path().join("roots"));
    let d = TestDaemon::start_with(tmp.path(), fake.clone(), |_| {});
    let c = d.client();
    let keep = c
        .create(
            None,
            Some("keep"),
            &BTreeMap::from([("k".into(), "v".into())]),
            None,
        )
        .unwrap();
    let lost = c
        .create(None, Some("lost"), &BTreeMap::new(), None)
        .unwrap();
    let gone = c.create(None, None, &BTreeMap::new(), None).unwrap();
    c.destroy(&gone.id).unwrap();
    d.stop();

    // While the daemon is down, one supervisor dies.
    fake.kill_supervisor(&lost.id);
    let d = TestDaemon::start_with(tmp.path(), fake.clone(), |_| {});
    let c = d.client();
    let all = c.list(&[], None).unwrap();
    assert_eq!(all.len(), 3);
    let k = c.get("keep").unwrap();
    assert_eq!(
        (k.state.as_str(), k.labels.get("k").map(String::as_str)),
        ("running", Some("v"))
    );
    assert!(k.usage.is_some(), "reattached: live status available");
    let r = c
        .exec(
            &keep.id,
            &ExecOptions {
                cmd: vec!["echo".into(), "still here".into()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.stdout, "still here\n");
    let l = c.get(&lost.id).unwrap();
    assert_eq!(l.state, "dead");
    assert_eq!(
        l.reason.as_deref(),
        Some("its supervisor died while the daemon was down")
    );
    assert_eq!(l.report.as_ref().unwrap()["id"], lost.id.as_str());
    assert_eq!(c.get(&gone.id).unwrap().state, "destroyed");
    // The dead sandbox's name is free again.
    c.create(None, Some("lost"), &BTreeMap::new(), None)
        .unwrap();
    c.destroy(&keep.id).unwrap();
    assert!(!fake.alive().contains(&keep.id));
}
