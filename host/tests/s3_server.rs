//! What the replica's lease and uploads rely on, proved against the server the tests use
//! (`s3s-fs` through `object_store`, the host's own client): a create-only put of an existing
//! key is refused, an update with a stale e-tag is refused, and multipart uploads arrive whole.
//! If a server lacked one of these, two hosts could both believe they hold one prefix.

mod common;

use common::s3::S3Server;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

const BUCKET: &str = "semantics";

fn create() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

fn update(v: UpdateVersion) -> PutOptions {
    PutOptions {
        mode: PutMode::Update(v),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_only_put_of_an_existing_key_is_refused() {
    let server = S3Server::start_with_bucket(BUCKET);
    let store = server.store(BUCKET);
    let key = ObjPath::from("p/lease");
    let first = store
        .put_opts(&key, PutPayload::from_static(b"host-a"), create())
        .await
        .expect("the first create-only put");
    assert!(first.e_tag.is_some(), "the server returns an e-tag");
    let second = store
        .put_opts(&key, PutPayload::from_static(b"host-b"), create())
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "a second If-None-Match: * put must fail with 412 (AlreadyExists): {second:?}"
    );
    // The loser changed nothing.
    let got = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"host-a");
}

#[tokio::test]
async fn update_with_a_stale_etag_is_refused_and_with_the_current_one_accepted() {
    let server = S3Server::start_with_bucket(BUCKET);
    let store = server.store(BUCKET);
    let key = ObjPath::from("p/lease");
    let v1 = store
        .put_opts(&key, PutPayload::from_static(b"lease 1"), create())
        .await
        .unwrap();
    let v1 = UpdateVersion {
        e_tag: v1.e_tag,
        version: v1.version,
    };
    // Renewal with the e-tag we hold: accepted, and the e-tag changes.
    let v2 = store
        .put_opts(
            &key,
            PutPayload::from_static(b"lease 2"),
            update(v1.clone()),
        )
        .await
        .expect("If-Match with the current e-tag");
    assert_ne!(v2.e_tag, v1.e_tag, "a new body gets a new e-tag");
    // A host still holding v1 (it lost the lease) must be refused.
    let stale = store
        .put_opts(&key, PutPayload::from_static(b"stale"), update(v1))
        .await;
    assert!(
        matches!(stale, Err(object_store::Error::Precondition { .. })),
        "If-Match with a stale e-tag must fail with 412 (Precondition): {stale:?}"
    );
    // Updating a key that does not exist is refused too (a deleted lease is not held).
    let gone = store
        .put_opts(
            &ObjPath::from("p/absent"),
            PutPayload::from_static(b"x"),
            update(UpdateVersion {
                e_tag: v2.e_tag,
                version: None,
            }),
        )
        .await;
    assert!(gone.is_err(), "If-Match on a missing key: {gone:?}");
    let got = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"lease 2");
}

#[tokio::test]
async fn multipart_upload_arrives_whole() {
    let server = S3Server::start_with_bucket(BUCKET);
    let store = server.store(BUCKET);
    let key = ObjPath::from("p/g/00000000000000000001/base");
    // Three parts: two of the 5 MiB minimum, one short tail; every byte distinct per position.
    let part = 5 << 20;
    let data: Vec<u8> = (0..2 * part + 12345)
        .map(|i: usize| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut up = store.put_multipart(&key).await.unwrap();
    for chunk in data.chunks(part) {
        up.put_part(PutPayload::from(chunk.to_vec()))
            .await
            .expect("upload part");
    }
    up.complete().await.expect("complete multipart upload");
    let got = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got[..] == data[..], "multipart object differs");
    // And on disk, where the replica tests read objects directly.
    let on_disk = std::fs::read(server.object_path(BUCKET, key.as_ref())).unwrap();
    assert!(on_disk == data, "the object's file on disk differs");
    // An abandoned upload leaves no object behind.
    let key2 = ObjPath::from("p/abandoned");
    let mut up = store.put_multipart(&key2).await.unwrap();
    up.put_part(PutPayload::from(vec![7u8; part]))
        .await
        .unwrap();
    up.abort().await.unwrap();
    assert!(matches!(
        store.head(&key2).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

/// The fixture itself: a stopped server refuses connections, a restarted one serves the same
/// objects on the same port, and a byte flipped on disk is served as is (the server does not
/// mask corruption: the replica's own CRC check is what the corruption tests exercise).
#[tokio::test]
async fn fixture_restarts_on_its_port_and_serves_bytes_changed_on_disk() {
    let mut server = S3Server::start_with_bucket(BUCKET);
    let store = server.store(BUCKET);
    let key = ObjPath::from("p/g/00000000000000000007/base");
    store
        .put(&key, PutPayload::from_static(b"0123456789"))
        .await
        .unwrap();
    server.stop();
    assert!(!server.running());
    assert!(
        store.get(&key).await.is_err(),
        "a stopped server answers nothing"
    );
    server.start();
    let got = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"0123456789", "objects survive a restart");
    let file = server.object_path(BUCKET, key.as_ref());
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let got = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], &bytes[..], "served as found on disk");
    let listed = server.objects(BUCKET, "p/");
    assert_eq!(listed.keys().collect::<Vec<_>>(), [key.as_ref()]);
}

/// The fixture's two additions to s3s-fs are what the tests take them for: with
/// `ignore_conditions` a create-only put replaces an existing object and a stale `If-Match` is
/// accepted (a store without conditional writes); incomplete multipart uploads are listed
/// (with their age) until completed or aborted; a missing bucket answers 404.
#[tokio::test]
async fn fixture_can_ignore_conditions_lists_incomplete_uploads_and_refuses_missing_buckets() {
    let server = S3Server::start_with_bucket(BUCKET);
    let store = server.store(BUCKET);
    let key = ObjPath::from("p/lease");
    let v1 = store
        .put_opts(&key, PutPayload::from_static(b"a"), create())
        .await
        .unwrap();
    server.ignore_conditions(true);
    store
        .put_opts(&key, PutPayload::from_static(b"b"), create())
        .await
        .expect("a create-only put over an existing key, accepted");
    let stale = UpdateVersion {
        e_tag: v1.e_tag,
        version: None,
    };
    store
        .put_opts(&key, PutPayload::from_static(b"c"), update(stale))
        .await
        .expect("a stale If-Match, accepted");
    server.ignore_conditions(false);
    assert!(store
        .put_opts(&key, PutPayload::from_static(b"d"), create())
        .await
        .is_err());

    let mut up = store
        .put_multipart(&ObjPath::from("p/g/x/base"))
        .await
        .unwrap();
    up.put_part(PutPayload::from(vec![1u8; 5 << 20]))
        .await
        .unwrap();
    assert_eq!(server.incomplete_uploads(BUCKET), ["p/g/x/base"]);
    server.backdate_uploads(std::time::Duration::from_secs(3600));
    assert_eq!(server.incomplete_uploads(BUCKET), ["p/g/x/base"]);
    up.abort().await.unwrap();
    assert!(server.incomplete_uploads(BUCKET).is_empty());

    let missing = server.store("no-such-bucket");
    let r = missing
        .put(&ObjPath::from("k"), PutPayload::from_static(b"x"))
        .await;
    assert!(
        matches!(r, Err(object_store::Error::NotFound { .. })),
        "{r:?}"
    );
}

/// Conditional writes racing on one key: exactly one wins, as on S3 (which serializes
/// writes to a key). s3s-fs alone checks the condition and then writes, so two racing
/// `If-Match` puts could both succeed; the fixture serializes conditional puts (found by
/// `standby.rs`'s racing standbys, issue 26).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_conditional_updates_of_one_key_let_exactly_one_win() {
    let server = S3Server::start_with_bucket(BUCKET);
    let store = std::sync::Arc::new(server.store(BUCKET));
    for round in 0..20 {
        let key = ObjPath::from(format!("p/race-{round}"));
        let v = store
            .put_opts(&key, PutPayload::from_static(b"v0"), create())
            .await
            .unwrap();
        let v = UpdateVersion {
            e_tag: v.e_tag,
            version: v.version,
        };
        let mut tasks = Vec::new();
        for i in 0..4u8 {
            let (store, key, v) = (store.clone(), key.clone(), v.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .put_opts(&key, PutPayload::from(vec![i; 16]), update(v))
                    .await
                    .is_ok()
            }));
        }
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.unwrap());
        }
        assert_eq!(
            won, 1,
            "round {round}: {won} racing If-Match puts succeeded"
        );
    }
}
