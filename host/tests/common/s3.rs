//! A real S3 server for the replica tests, inside the test process: `s3s-fs`'s file-system
//! store behind `s3s`'s HTTP service (the library crates, dev-dependencies: nothing to install),
//! served by `hyper-util` on 127.0.0.1 from its own tokio runtime. One temporary directory per
//! server, each subdirectory a bucket. Objects are plain files at `DIR/BUCKET/KEY` (a `/` in a
//! key is a subdirectory); s3s-fs keeps its metadata (e-tags, upload parts) in dot-files at the
//! top of `DIR`, outside every bucket, so a test may count, read and corrupt objects on disk.
//!
//! The server can be stopped (every connection dropped, the port refuses) and started again on
//! the same port. Two behaviours real stores have and s3s-fs lacks are added by [`Store`], a
//! thin wrapper that passes every other request to s3s-fs:
//!
//! - `ListMultipartUploads` (s3s-fs 0.14 answers 501): the incomplete uploads, read from
//!   s3s-fs's own upload records on disk (so they survive a restart), initiated at the record's
//!   modification time ([`S3Server::backdate_uploads`] ages them);
//! - conditional puts (`If-None-Match` / `If-Match`) one at a time, so that a condition and
//!   the write it guards are atomic as on S3 (s3s-fs checks, then writes: two racing
//!   conditional puts could both pass);
//! - [`S3Server::ignore_conditions`]: a store that ignores `If-None-Match` / `If-Match` (as some
//!   S3-compatible stores do). This is done in the server, not a proxy, because SigV4 signs
//!   every header the client sends: a proxy that strips them gets 403 (a signature mismatch),
//!   which is not the behaviour under test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, S3};

/// The access key every fixture server accepts.
pub const ACCESS_KEY: &str = "shmsnap-test-key";
/// The secret key every fixture server accepts.
pub const SECRET_KEY: &str = "shmsnap-test-secret";
/// The region the clients sign for (s3s accepts any).
pub const REGION: &str = "us-east-1";

/// A running (or stopped) server over its own temporary directory, on a fixed port for its
/// whole life; stopped on drop.
pub struct S3Server {
    /// The data directory (`DIR/BUCKET/KEY`); removed on drop.
    dir: tempfile::TempDir,
    /// The port, kept across `stop()`/`start()` so that clients need no new settings.
    port: u16,
    /// Shared with the [`Store`] of every start.
    ignore_conditions: Arc<AtomicBool>,
    /// The serving thread while the server runs.
    running: Option<Running>,
}

/// A running server: its thread, and the signal that stops it.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// The server thread: binds `addr` (retrying a while: the port of a just-stopped server may
/// linger), reports the port, serves until `stopped`, then drops its runtime, which closes
/// the listener and every connection.
fn serve(
    store: Store,
    addr: SocketAddr,
    bound: &std::sync::mpsc::Sender<u16>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("S3 server runtime");
    let service = {
        let mut b = s3s::service::S3ServiceBuilder::new(store);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        b.build()
    };
    rt.block_on(async move {
        let mut last = None;
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listener =
            listener.unwrap_or_else(|| panic!("cannot bind the S3 server to {addr}: {last:?}"));
        let _ = bound.send(listener.local_addr().expect("local addr").port());
        let http =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        let accept = async {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let conn = http
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        };
        tokio::select! {
            () = accept => {}
            _ = stopped => {}
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}

impl S3Server {
    /// Starts a server with one bucket `bucket` on a free loopback port.
    pub fn start_with_bucket(bucket: &str) -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("shmsnap-s3-")
            .tempdir()
            .expect("tempdir");
        let mut s = S3Server {
            dir,
            port: 0,
            ignore_conditions: Arc::default(),
            running: None,
        };
        s.add_bucket(bucket);
        s.start();
        s
    }

    /// Creates bucket `name` (a directory, which is all a bucket is to s3s-fs).
    pub fn add_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.dir.path().join(name)).expect("mkdir bucket");
    }

    /// Starts the server (again) on its port (a free one the first time) and directory;
    /// returns once it accepts connections. The server runs on its own thread and runtime,
    /// so that a test may call this from inside its own runtime (`#[tokio::test]`).
    pub fn start(&mut self) {
        assert!(self.running.is_none(), "the S3 server is already running");
        let store = Store {
            fs: s3s_fs::FileSystem::new(self.dir.path()).expect("s3s-fs over the directory"),
            root: self.dir.path().to_owned(),
            ignore_conditions: self.ignore_conditions.clone(),
            conditional: tokio::sync::Mutex::default(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("s3-server".into())
            .spawn(move || serve(store, addr, &bound_tx, stopped))
            .expect("spawn the S3 server thread");
        self.port = bound_rx.recv().expect("the S3 server did not bind");
        self.running = Some(Running { stop, thread });
    }

    /// Stops the server: the listener and every connection are closed (a request in flight
    /// gets a reset), and the port refuses connections until [`start`](S3Server::start).
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(());
            r.thread.join().expect("the S3 server thread panicked");
        }
    }

    /// Whether the server is running.
    pub fn running(&self) -> bool {
        self.running.is_some()
    }

    /// From now on the server ignores `If-None-Match` and `If-Match` on PUT (`true`), or
    /// honours them again (`false`).
    pub fn ignore_conditions(&self, ignore: bool) {
        self.ignore_conditions.store(ignore, Ordering::Relaxed);
    }

    /// Makes every incomplete multipart upload look initiated `age` earlier (its upload record
    /// on disk gets an older modification time).
    pub fn backdate_uploads(&self, age: Duration) {
        for u in incomplete_uploads(self.dir.path()) {
            let t = u.initiated - age;
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            let ts = rustix::fs::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()),
            };
            let times = rustix::fs::Timestamps {
                last_access: ts,
                last_modification: ts,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &u.record,
                &times,
                rustix::fs::AtFlags::empty(),
            )
            .expect("utimensat");
        }
    }

    /// The incomplete multipart uploads of `bucket` (their keys), as the server knows them.
    pub fn incomplete_uploads(&self, bucket: &str) -> Vec<String> {
        incomplete_uploads(self.dir.path())
            .into_iter()
            .filter(|u| u.bucket == bucket)
            .map(|u| u.key)
            .collect()
    }

    /// The endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (buckets are its subdirectories).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where object `key` of `bucket` lives on disk.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.dir.path().join(bucket).join(key)
    }

    /// Every object of `bucket` under `prefix` (a key prefix, matched per character like S3
    /// does): key → bytes, read from disk. s3s-fs writes an object to a temporary file at the
    /// top of `DIR` and renames it into place, so a listed file is always whole.
    pub fn objects(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> std::collections::BTreeMap<String, Vec<u8>> {
        let root = self.dir.path().join(bucket);
        let mut out = std::collections::BTreeMap::new();
        let mut todo = vec![root.clone()];
        while let Some(d) = todo.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p);
                    continue;
                }
                let key = p
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if key.starts_with(prefix) {
                    // Removed between the listing and the read: not there.
                    if let Ok(b) = std::fs::read(&p) {
                        out.insert(key, b);
                    }
                }
            }
        }
        out
    }

    /// Deletes every object of `bucket` under `prefix` through the S3 API (as `aws s3 rm
    /// --recursive` would); returns how many.
    pub fn wipe(&self, bucket: &str, prefix: &str) -> usize {
        use futures_util::TryStreamExt;
        use object_store::{ObjectStore, ObjectStoreExt};
        let store = self.store(bucket);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = object_store::path::Path::from(prefix);
            let keys: Vec<_> = store
                .list(Some(&p))
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .expect("list for wipe");
            for k in &keys {
                store.delete(k).await.expect("delete for wipe");
            }
            keys.len()
        })
    }

    /// The S3 settings for a client of this server, as the host reads them: set on `cmd`,
    /// with every other `AWS_*` variable of the test's environment removed.
    pub fn env(&self, cmd: &mut Command) {
        self.env_with(cmd, ACCESS_KEY, SECRET_KEY);
    }

    /// Like [`env`], with the given credentials (to test refused ones).
    ///
    /// [`env`]: S3Server::env
    pub fn env_with(&self, cmd: &mut Command, access: &str, secret: &str) {
        env_for(cmd, &self.endpoint(), access, secret);
    }

    /// An `object_store` client for `bucket` on this server, path-style, plain HTTP, without
    /// retries (a test asking a stopped server wants the error, not 10 attempts).
    pub fn store(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region(REGION)
            .with_bucket_name(bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("object_store client")
    }
}

/// The S3 settings of the host for `endpoint` (this server, or a proxy in front of it).
pub fn env_for(cmd: &mut Command, endpoint: &str, access: &str, secret: &str) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", access)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", REGION)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true");
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An incomplete multipart upload, from s3s-fs's records: `DIR/.upload-<id>.json` (the
/// upload exists) and `DIR/.bucket-<b64 bucket>.object-<b64 key>.upload-<id>.metadata.json`
/// (which object it is for), both written by `CreateMultipartUpload` and removed by its
/// completion or abort.
struct Upload {
    bucket: String,
    key: String,
    id: String,
    record: PathBuf,
    initiated: SystemTime,
}

fn incomplete_uploads(dir: &Path) -> Vec<Upload> {
    let decode = |s: &str| {
        let b = base64_simd::URL_SAFE_NO_PAD.decode_to_vec(s).ok()?;
        String::from_utf8(b).ok()
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix(".bucket-")
            .and_then(|r| r.strip_suffix(".metadata.json"))
        else {
            continue;
        };
        let Some((bucket, rest)) = rest.split_once(".object-") else {
            continue;
        };
        let Some((key, id)) = rest.split_once(".upload-") else {
            continue;
        };
        let record = dir.join(format!(".upload-{id}.json"));
        let Ok(meta) = std::fs::metadata(&record) else {
            continue;
        };
        let (Some(bucket), Some(key)) = (decode(bucket), decode(key)) else {
            continue;
        };
        out.push(Upload {
            bucket,
            key,
            id: id.to_owned(),
            record,
            initiated: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    out
}

/// s3s-fs, plus `ListMultipartUploads` and a switch that ignores conditional headers (module
/// docs). Only the operations `object_store` and the host use are passed on.
struct Store {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    ignore_conditions: Arc<AtomicBool>,
    /// Held across a conditional put's check and write: s3s-fs does them one after the
    /// other, so two racing `If-Match` puts could both pass; S3 serializes writes to a key.
    conditional: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// S3 answers 404 `NoSuchBucket` for a bucket that does not exist; s3s-fs would create
    /// its directory on a put.
    fn bucket(&self, bucket: &str) -> S3Result<()> {
        if self.root.join(bucket).is_dir() {
            Ok(())
        } else {
            Err(s3s::s3_error!(NoSuchBucket))
        }
    }
}

#[async_trait::async_trait]
impl S3 for Store {
    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.bucket(&req.input.bucket)?;
        if self.ignore_conditions.load(Ordering::Relaxed) {
            req.input.if_match = None;
            req.input.if_none_match = None;
        }
        if req.input.if_match.is_some() || req.input.if_none_match.is_some() {
            let _one_at_a_time = self.conditional.lock().await;
            return self.fs.put_object(req).await;
        }
        self.fs.put_object(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.bucket(&req.input.bucket)?;
        self.fs.get_object(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.bucket(&req.input.bucket)?;
        self.fs.head_object(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.bucket(&req.input.bucket)?;
        self.fs.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.fs.delete_objects(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.bucket(&req.input.bucket)?;
        self.fs.list_objects_v2(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.bucket(&req.input.bucket)?;
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.fs.upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.fs.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.fs.abort_multipart_upload(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads: Vec<MultipartUpload> = incomplete_uploads(&self.root)
            .into_iter()
            .filter(|u| u.bucket == input.bucket && u.key.starts_with(&prefix))
            .map(|u| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(u.id),
                initiated: Some(Timestamp::from(u.initiated)),
                ..Default::default()
            })
            .collect();
        uploads.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}
