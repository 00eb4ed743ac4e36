use super::*;
use hickory_proto::rr::Name;
use stockade_policy::NetMode;

fn policy() -> NetworkPolicy {
    NetworkPolicy {
        mode: NetMode::Allowlist,
        allow_hosts: vec!["good.test".parse().unwrap(), "*.wild.test".parse().unwrap()],
        map_hosts: vec!["db.test=10.99.0.2".parse().unwrap()],
        ..Default::default()
    }
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn parse_reply(plan: Plan) -> (Message, Option<String>) {
    match plan {
        Plan::Reply {
            bytes,
            name,
            denied,
        } => (Message::from_vec(&bytes).unwrap(), name.filter(|_| denied)),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn refuses_names_that_are_not_allowed_with_nxdomain() {
    for name in [
        "bad.test.",
        "wild.test.",
        "good.test.evil.test.",
        "x.good.test.",
    ] {
        let (m, denied) = parse_reply(plan(&policy(), &query(name, RecordType::A)));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.answers.is_empty());
        assert_eq!(denied.as_deref(), Some(name.trim_end_matches('.')));
    }
}

#[test]
fn asks_the_host_only_for_allowed_unmapped_a_queries() {
    for name in ["good.test.", "GOOD.test.", "a.b.wild.test."] {
        match plan(&policy(), &query(name, RecordType::A)) {
            Plan::Resolve { name: n, .. } => {
                assert_eq!(n, name.trim_end_matches('.').to_lowercase())
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn answers_mapped_names_without_resolving() {
    let (m, denied) = parse_reply(plan(&policy(), &query("db.test.", RecordType::A)));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(denied.is_none());
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        m.answers[0].data,
        RData::A(rdata::A("10.99.0.2".parse().unwrap()))
    );
    assert_eq!(m.answers[0].ttl, ANSWER_TTL);
}

#[test]
fn allowed_names_have_no_other_record_types() {
    for t in [RecordType::AAAA, RecordType::TXT, RecordType::MX] {
        let (m, _) = parse_reply(plan(&policy(), &query("good.test.", t)));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }
    // A TXT query for a name that is not allowed still never resolves.
    let (m, _) = parse_reply(plan(&policy(), &query("data.bad.test.", RecordType::TXT)));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn service_lookups_under_allowed_names_are_answered_without_a_denial() {
    // apt asks for `_http._tcp.<mirror>` (SRV) before it connects.
    for (name, t) in [
        ("_http._tcp.good.test.", RecordType::SRV),
        ("_https._tcp.db.test.", RecordType::SRV),
        ("_x.good.test.", RecordType::TXT),
        ("_http._tcp.good.test.", RecordType::AAAA),
    ] {
        let plan = plan(&policy(), &query(name, t));
        let Plan::Reply {
            name: n, denied, ..
        } = &plan
        else {
            panic!("{name}: {plan:?}")
        };
        assert!(!denied, "{name}");
        assert_eq!(n, &None, "{name}: nothing to pin or report");
        let (m, _) = parse_reply(plan);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.answers.is_empty(), "{name}");
    }
    // The same under a name that is not allowed is still a denial, and
    // an underscore label alone does not make a name allowed.
    for name in [
        "_http._tcp.bad.test.",
        "_http._tcp.",
        "_good.test.evil.test.",
        "good.test._tcp.",
    ] {
        let Ok(n) = Name::from_ascii(name) else {
            continue;
        };
        let mut m = Message::query();
        m.add_query(Query::query(n, RecordType::SRV));
        let (m, denied) = parse_reply(plan(&policy(), &m.to_vec().unwrap()));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(denied.is_some(), "{name} was not reported");
    }
}

#[test]
fn service_base_strips_only_leading_underscore_labels() {
    assert_eq!(service_base("_http._tcp.good.test"), Some("good.test"));
    assert_eq!(service_base("_x.y"), Some("y"));
    assert_eq!(service_base("good.test"), None);
    assert_eq!(service_base("_http._tcp"), None);
    assert_eq!(service_base("a._tcp.good.test"), None);
}

#[test]
fn builds_answers_from_resolution_results() {
    let Plan::Resolve { query: q, .. } = plan(&policy(), &query("good.test.", RecordType::A))
    else {
        panic!()
    };
    let addrs = vec![
        "203.0.113.10".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    ];
    let bytes = answer(&q, Ok(addrs));
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!(m.answers.len(), 1, "only the IPv4 address is answered");
    assert_eq!(
        Pins::addrs_in(&bytes),
        vec!["203.0.113.10".parse::<IpAddr>().unwrap()]
    );
    let m = Message::from_vec(&answer(&q, Ok(vec![]))).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = Message::from_vec(&answer(&q, Err(std::io::Error::other("x")))).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn refuses_names_with_bytes_no_host_name_has() {
    // One label "evil.good" (a dot inside a label) under "test": rendered as
    // text it would look like a name below good.test.
    let mut raw = query("placeholder.test.", RecordType::A);
    let at = raw.windows(11).position(|w| w == b"placeholder").unwrap();
    raw[at..at + 11].copy_from_slice(b"x.wild.test");
    let (m, denied) = parse_reply(plan(&policy(), &raw));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(denied.is_some());
}

#[test]
fn garbage_gets_formerr_or_nothing_and_never_panics() {
    assert!(matches!(plan(&policy(), b"short"), Plan::Ignore));
    let mut junk = vec![0x12, 0x34, 0x01, 0x00];
    junk.extend_from_slice(&[0xff; 20]);
    let (m, _) = parse_reply(plan(&policy(), &junk));
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    let q = query("good.test.", RecordType::A);
    for i in 0..q.len() {
        for v in [0u8, 0xff, 0x3f, 0xc0] {
            let mut m = q.clone();
            m[i] = v;
            let _ = plan(&policy(), &m);
            let _ = plan(&policy(), &m[..i]);
        }
    }
    // A response is never answered.
    let mut resp = q.clone();
    resp[2] |= 0x80;
    assert!(matches!(plan(&policy(), &resp), Plan::Ignore));
}

#[test]
fn pins_remember_names_per_address() {
    let mut p = Pins::default();
    let a: IpAddr = "203.0.113.10".parse().unwrap();
    p.record("good.test", &[a]);
    p.record("other.test", &[a]);
    let names: Vec<_> = p.names(a).unwrap().iter().cloned().collect();
    assert_eq!(names, ["good.test", "other.test"]);
    assert!(p.names("203.0.113.11".parse().unwrap()).is_none());
}
