use std::sync::Arc;

use object_store::memory::InMemory;

use std::time::{Duration, Instant};

use super::*;

fn holder(machine: &str, path: &str, pid: u32) -> Holder {
    Holder {
        machine_id: machine.into(),
        state_path: path.into(),
        pid,
        run_id: format!("run-{pid}"),
    }
}

fn local() -> (tempfile::TempDir, Replica) {
    let dir = tempfile::tempdir().unwrap();
    let r = Replica::open(&format!("file://{}", dir.path().display())).unwrap();
    (dir, r)
}

/// An in-memory store with real conditional updates (e-tags), like S3.
fn memory() -> Replica {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    Replica {
        store: store.clone(),
        lease_store: store,
        prefix: object_store::path::Path::from("p"),
        url: "memory://p".into(),
        local: false,
        s3: None,
    }
}

#[test]
fn a_second_holder_is_refused_until_the_lease_expires_and_a_restart_takes_over() {
    let rt = crate::replica::store::runtime().unwrap();
    for (_dir, r) in [local(), (tempfile::tempdir().unwrap(), memory())] {
        let first = rt
            .block_on(Lease::take(&r, holder("m1", "/s", 1), DEFAULT_TTL, true))
            .unwrap();
        let e = rt
            .block_on(Lease::take(&r, holder("m2", "/s", 2), DEFAULT_TTL, true))
            .unwrap_err();
        match &e {
            LeaseError::Held { key, body } => {
                assert!(key.ends_with("lease"), "{key}");
                assert_eq!(body.holder, first.body().holder);
            }
            other => panic!("expected Held, got {other}"),
        }
        assert!(e.to_string().contains("pid 1 on machine m1"), "{e}");
        // Same machine and state path (a restarted host): takes over at once.
        let mut again = rt
            .block_on(Lease::take(&r, holder("m1", "/s", 3), DEFAULT_TTL, true))
            .unwrap();
        // The first holder's renew now fails: another run holds it.
        let mut first = first;
        match rt.block_on(first.renew(&r)) {
            Err(LeaseError::Lost { holder, .. }) => assert_eq!(holder.run_id, "run-3"),
            other => panic!("{}: expected Lost, got {other:?}", r.url),
        }
        assert_eq!(rt.block_on(again.renew(&r)).unwrap(), Renewed::Held);
    }
}

#[test]
fn an_expired_lease_is_free_and_garbage_is_refused_not_overwritten() {
    let rt = crate::replica::store::runtime().unwrap();
    let (dir, r) = local();
    let stale = Body {
        expires_unix_ms: 1,
        ..Body::new(holder("m1", "/s", 1), DEFAULT_TTL)
    };
    std::fs::write(
        dir.path().join("lease"),
        serde_json::to_vec(&stale).unwrap(),
    )
    .unwrap();
    rt.block_on(Lease::take(&r, holder("m2", "/t", 2), DEFAULT_TTL, true))
        .unwrap();
    std::fs::write(dir.path().join("lease"), b"not json").unwrap();
    assert!(matches!(
        rt.block_on(Lease::take(&r, holder("m2", "/t", 2), DEFAULT_TTL, true)),
        Err(LeaseError::Foreign { .. })
    ));
    assert_eq!(
        std::fs::read(dir.path().join("lease")).unwrap(),
        b"not json"
    );
}

/// A lease written before run ids existed parses, and is never taken for this run's own.
#[test]
fn an_old_lease_without_run_id_parses_and_is_not_this_run() {
    let old = br#"{"holder":{"machine_id":"m","state_path":"/s","pid":7},"expires_unix_ms":5}"#;
    let b: Body = serde_json::from_slice(old).unwrap();
    assert_eq!(b.holder.run_id, "");
    let mut me = holder("m", "/s", 7);
    assert!(me.same_run(&holder("x", "/y", 7)), "same run id");
    assert!(!me.same_run(&b.holder));
    me.run_id.clear();
    assert!(!me.same_run(&b.holder), "two empty run ids are not one run");
    assert_ne!(run_id(), run_id(), "fresh per run");
}

/// The renewal whose answer was lost: the write landed (the e-tag changed), so the retry with
/// the old e-tag is refused (412). Reading the lease shows this run: adopted, not "lost".
#[test]
fn a_refused_renewal_of_our_own_lease_is_adopted_not_lost() {
    let rt = crate::replica::store::runtime().unwrap();
    let r = memory();
    let mut lease = rt
        .block_on(Lease::take(&r, holder("m", "/s", 1), DEFAULT_TTL, true))
        .unwrap();
    let stale = lease.version.clone();
    assert_eq!(rt.block_on(lease.renew(&r)).unwrap(), Renewed::Held);
    let landed = lease.version.clone();
    // As if the answer of that renewal never arrived: we still hold the old e-tag.
    lease.version = stale;
    assert_eq!(rt.block_on(lease.renew(&r)).unwrap(), Renewed::Held);
    assert_eq!(
        lease.version.e_tag, landed.e_tag,
        "the landed write's e-tag is adopted"
    );
    assert_eq!(rt.block_on(lease.renew(&r)).unwrap(), Renewed::Held);
    // Another run writes it: now it is lost, naming the holder.
    let other = Body::new(holder("m2", "/t", 9), Duration::from_secs(60));
    rt.block_on(r.store.put(
        &lease_key(&r),
        PutPayload::from(serde_json::to_vec(&other).unwrap()),
    ))
    .unwrap();
    match rt.block_on(lease.renew(&r)) {
        Err(LeaseError::Lost { holder, .. }) => assert_eq!(holder.run_id, "run-9"),
        other => panic!("expected Lost, got {other:?}"),
    }
}

/// The lease object deleted (a wiped prefix): the renewal re-creates it, create-only, and
/// says so; on `file://` too.
#[test]
fn a_deleted_lease_is_created_again_and_reported() {
    let rt = crate::replica::store::runtime().unwrap();
    for (_dir, r) in [local(), (tempfile::tempdir().unwrap(), memory())] {
        let mut lease = rt
            .block_on(Lease::take(&r, holder("m", "/s", 1), DEFAULT_TTL, true))
            .unwrap();
        rt.block_on(r.store.delete(&lease_key(&r))).unwrap();
        assert_eq!(
            rt.block_on(lease.renew(&r)).unwrap(),
            Renewed::Recreated,
            "{}",
            r.url
        );
        let back = rt.block_on(peek(&r)).unwrap().expect("re-created");
        assert_eq!(back.holder.run_id, "run-1");
        assert_eq!(rt.block_on(lease.renew(&r)).unwrap(), Renewed::Held);
    }
}

/// A TTL out of bounds in the bucket is hostile input: a typed error, never a panic, never
/// followed or overwritten; an expired lease is not taken by a standby's rules (no trust in
/// the holder's wall clock), a released one is.
#[test]
fn a_hostile_ttl_is_refused_and_only_a_release_frees_a_lease_for_a_standby() {
    let rt = crate::replica::store::runtime().unwrap();
    let (dir, r) = local();
    for ttl_ms in [0, 1999, 3_600_001, u64::MAX] {
        let b = Body {
            ttl_ms,
            ..Body::new(holder("m1", "/s", 1), DEFAULT_TTL)
        };
        let bytes = serde_json::to_vec(&b).unwrap();
        std::fs::write(dir.path().join("lease"), &bytes).unwrap();
        match rt.block_on(Lease::take(&r, holder("m2", "/t", 2), DEFAULT_TTL, true)) {
            Err(e @ LeaseError::BadTtl { .. }) => assert!(e.to_string().contains("TTL"), "{e}"),
            other => panic!("ttl {ttl_ms}: expected BadTtl, got {other:?}"),
        }
        assert_eq!(std::fs::read(dir.path().join("lease")).unwrap(), bytes);
    }
    let stale = Body {
        expires_unix_ms: 1,
        ..Body::new(holder("m1", "/s", 1), DEFAULT_TTL)
    };
    std::fs::write(
        dir.path().join("lease"),
        serde_json::to_vec(&stale).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        rt.block_on(Lease::take(&r, holder("m2", "/t", 2), DEFAULT_TTL, false)),
        Err(LeaseError::Held { .. })
    ));
    let lease = rt
        .block_on(Lease::take(&r, holder("m1", "/s", 1), MIN_TTL, false))
        .expect("same place");
    rt.block_on(lease.release(&r)).unwrap();
    let back = rt.block_on(peek(&r)).unwrap().unwrap();
    assert!(back.released);
    assert_eq!(back.ttl(), MIN_TTL);
    rt.block_on(Lease::take(&r, holder("m2", "/t", 2), DEFAULT_TTL, false))
        .expect("a released lease is free");
}

/// Validity is monotonic: from the send of the last confirmed write plus the TTL.
#[test]
fn validity_counts_from_the_send_of_the_confirmed_write() {
    let rt = crate::replica::store::runtime().unwrap();
    let r = memory();
    let before = Instant::now();
    let mut lease = rt
        .block_on(Lease::take(&r, holder("m", "/s", 1), MIN_TTL, true))
        .unwrap();
    let after = Instant::now();
    assert!(lease.valid_until() >= before + MIN_TTL && lease.valid_until() <= after + MIN_TTL);
    std::thread::sleep(Duration::from_millis(20));
    let sent = Instant::now();
    rt.block_on(lease.renew(&r)).unwrap();
    assert!(lease.valid_until() >= sent + MIN_TTL);
    assert!(lease.renew_due() < lease.valid_until());
}
