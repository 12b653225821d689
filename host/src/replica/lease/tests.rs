use std::sync::Arc;

use object_store::memory::InMemory;

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
        let first = rt.block_on(Lease::take(&r, holder("m1", "/s", 1))).unwrap();
        let e = rt
            .block_on(Lease::take(&r, holder("m2", "/s", 2)))
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
        let mut again = rt.block_on(Lease::take(&r, holder("m1", "/s", 3))).unwrap();
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
        holder: holder("m1", "/s", 1),
        expires_unix_ms: 1,
    };
    std::fs::write(
        dir.path().join("lease"),
        serde_json::to_vec(&stale).unwrap(),
    )
    .unwrap();
    rt.block_on(Lease::take(&r, holder("m2", "/t", 2))).unwrap();
    std::fs::write(dir.path().join("lease"), b"not json").unwrap();
    assert!(matches!(
        rt.block_on(Lease::take(&r, holder("m2", "/t", 2))),
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
    let mut lease = rt.block_on(Lease::take(&r, holder("m", "/s", 1))).unwrap();
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
    let other = Body {
        holder: holder("m2", "/t", 9),
        expires_unix_ms: now_ms() + 60_000,
    };
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
        let mut lease = rt.block_on(Lease::take(&r, holder("m", "/s", 1))).unwrap();
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
