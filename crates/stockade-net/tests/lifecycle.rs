//! Starting and stopping the stack leaves nothing behind. One test in this
//! binary, so the thread and descriptor counts of the process are its own.

mod common;

use std::sync::Arc;

use common::*;
use stockade_net::{Egress, EgressConfig, NetworkPolicy};
use stockade_policy::NetMode;

#[test]
#[ignore = "needs root: network namespaces and TUN"]
fn five_hundred_start_stop_cycles_leave_no_thread_or_descriptor() {
    isolate();
    add_hosts(&["203.0.113.10"]);
    let server = Server::start("203.0.113.10:0", 100);
    let policy = NetworkPolicy {
        mode: NetMode::Allowlist,
        allow_hosts: vec!["good.test".parse().unwrap()],
        ..Default::default()
    };
    let mut stub = StubResolver::default();
    stub.answers
        .insert("good.test".into(), vec!["203.0.113.10".parse().unwrap()]);
    let resolver: Arc<StubResolver> = Arc::new(stub);
    let (sandbox, first_tun) = Sandbox::new();
    drop(first_tun);

    let cycle = |i: usize, with_traffic: bool| {
        let tun = sandbox.new_tun();
        let mut cfg = EgressConfig::new(policy.clone(), format!("cycle-{i}"));
        cfg.resolver = resolver.clone();
        let egress = Egress::start(tun, cfg, |_| {}).unwrap();
        if with_traffic {
            let (rcode, addrs) = dns_answer(&sandbox.dns(dns_query(1, "good.test")).unwrap());
            assert_eq!((rcode, addrs.len()), (0, 1));
            // One connection left open across shutdown: shutdown must close it.
            let open = sandbox.connect(server.addr).unwrap();
            let done = sandbox.connect(server.addr).unwrap();
            assert_eq!(http_get(done, "good.test").unwrap(), 100);
            let sum = egress.shutdown();
            assert!(sum.bytes_down >= 100, "{sum:?}");
            drop(open);
        } else {
            egress.shutdown();
        }
    };
    // Warm up once so lazily made process-wide state exists before counting.
    cycle(0, true);
    let before = thread_and_fd_counts();
    for i in 1..=500 {
        cycle(i, i % 10 == 0);
    }
    // The server's per-connection threads finish on their own; give them a moment.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let after = thread_and_fd_counts();
    assert_eq!(before, after, "(threads, fds) before vs after 500 cycles");
    drop(sandbox);
}
