//! Fixtures of the `replica` group (issues 14, 21): real snapshot files of a 256 MiB region
//! (the [`SnapshotFixture`] of the snapshot group) against an S3 server started inside this
//! process (s3s-fs behind s3s, as the host's tests use; no binary to install).
//!
//! - **raw upload** (the reference): `object_store`'s `put_multipart` of the fully touched
//!   file's bytes through [`WriteMultipart`] in [`PART`]-byte parts, at most [`CONCURRENCY`] in
//!   flight — the same client and runtime the replica's uploads use.
//! - **replica upload** (ours): the same file as the replica uploads a base: packed
//!   ([`shmsnap_linux::packed::Plan`]: data extents and a run table) and put with the host's
//!   rule (one `PUT` up to [`SINGLE_PUT_MAX`], else parts of [`PART`], two in flight). The
//!   host's uploader is in the binary crate; this is its packing (the library) and its
//!   requests, without its thread and lease plumbing.
//! - **sparse upload** (ours): a 256 MiB region holding 16 MiB of data (`Touch::Sixteenth`),
//!   uploaded as above, vs. **raw 16 MiB PUT**: one `PUT` of 16 MiB from memory.
//! - **restore** (ours): `shmsnap restore --from s3://… --to OUT` (download, unpack, footer
//!   and CRC check, rename into place), the real binary in a child process, vs. **raw
//!   download**: a `GET` of the same object streamed into a file, `fdatasync`, no check.
//!
//! The server's data directory lives in the bench directory (a real disk).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use shmsnap_linux::packed::Plan;

use crate::snapshot::{SnapshotFixture, Touch};

/// The region (and so the snapshot file) size of the group.
pub const SNAPSHOT_LEN: u64 = 256 << 20;
/// Part size of multipart uploads (the host's).
pub const PART: usize = 16 << 20;
/// Objects up to this size are one `PUT` (the host's rule).
pub const SINGLE_PUT_MAX: u64 = 32 << 20;
/// Parts in flight at most, for the raw reference.
pub const CONCURRENCY: usize = 4;
/// The bucket of the fixture server.
pub const BUCKET: &str = "bench";
/// The replica's prefix in [`BUCKET`].
pub const PREFIX: &str = "replica";
const ACCESS_KEY: &str = "shmsnap-bench-key";
const SECRET_KEY: &str = "shmsnap-bench-secret";
const REGION: &str = "us-east-1";
/// Where the raw reference upload goes.
const RAW_KEY: &str = "raw/base";

fn sub(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// The `shmsnap` binary the restore rows run: `SHMSNAP_BIN`, else next to this executable
/// (`target/release/`, or its parent for criterion's `target/release/deps/`).
pub fn shmsnap_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHMSNAP_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("shmsnap"))
        .find(|p| p.is_file())
}

/// An S3 server (s3s-fs over `dir`, served by s3s and hyper-util) on a free loopback port,
/// on its own thread and runtime; stopped on drop, and its directory removed.
#[derive(Debug)]
pub struct Server {
    port: u16,
    dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts a server over `dir` (emptied first) with one bucket, [`BUCKET`].
    ///
    /// # Errors
    ///
    /// I/O errors; `Other` if the server does not bind.
    pub fn start(dir: &Path) -> io::Result<Server> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join(BUCKET))?;
        let fs = s3s_fs::FileSystem::new(dir).map_err(|e| io::Error::other(format!("{e:?}")))?;
        let service = {
            let mut b = s3s::service::S3ServiceBuilder::new(fs);
            b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            b.build()
        };
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(SocketAddr::from((
                    [127, 0, 0, 1],
                    0,
                )))
                .await
                {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                let _ = bound_tx.send(listener.local_addr().map(|a| a.port()));
                let http = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
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
        });
        let port = bound_rx
            .recv()
            .map_err(|_| io::Error::other("the S3 server thread died"))??;
        Ok(Server {
            port,
            dir: dir.to_owned(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The S3 settings of the host's `AWS_*` environment, set on `cmd`.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", REGION)
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ALLOW_HTTP", "true");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The snapshot files, the server, the client and the runtime (module docs).
#[derive(Debug)]
pub struct ReplicaFixture {
    /// Keeps the fully touched region and its snapshot file.
    snap: SnapshotFixture,
    file: PathBuf,
    /// Keeps the region holding 1/16 of data and its (sparse) snapshot file.
    _sparse: SnapshotFixture,
    sparse_file: PathBuf,
    /// The reference's 16 MiB, in memory.
    data: bytes::Bytes,
    /// The replica's key of the full file: `PREFIX/g/<generation, 20 digits>/base`.
    base_key: ObjPath,
    server: Server,
    store: Arc<AmazonS3>,
    rt: tokio::runtime::Runtime,
    /// Where downloads and restores go (unlinked before each one).
    out: PathBuf,
    shmsnap: Option<PathBuf>,
}

/// An `Other` error with the store's message.
fn store_err(e: object_store::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl ReplicaFixture {
    /// Takes a snapshot of a fully touched 256 MiB region and one of a 256 MiB region holding
    /// 16 MiB in `dir`, starts the server over `dir/s3`, puts the full snapshot raw (checked
    /// to read back byte for byte) and packed at its replica key.
    ///
    /// # Errors
    ///
    /// Any I/O, server or store error; `InvalidData` if the object differs from the file.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let snap = SnapshotFixture::new(&sub(dir, "full")?, SNAPSHOT_LEN, Touch::Full)?;
        let sparse = SnapshotFixture::new(&sub(dir, "sparse")?, SNAPSHOT_LEN, Touch::Sixteenth)?;
        let file = snap.target();
        let sparse_file = sparse.target();
        let mut data = vec![0u8; (SNAPSHOT_LEN / 16) as usize];
        File::open(&sparse_file)?.read_exact(&mut data)?;
        // The fixture took one snapshot: generation 1.
        let base_key = ObjPath::from(format!("{PREFIX}/g/{:020}/base", 1));
        let server = Server::start(&dir.join("s3"))?;
        let store = AmazonS3Builder::new()
            .with_endpoint(server.endpoint())
            .with_allow_http(true)
            .with_region(REGION)
            .with_bucket_name(BUCKET)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .map_err(store_err)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let f = Self {
            snap,
            file,
            _sparse: sparse,
            sparse_file,
            data: bytes::Bytes::from(data),
            base_key,
            server,
            store: Arc::new(store),
            rt,
            out: dir.join("replica-restored.snap"),
            shmsnap: shmsnap_binary(),
        };
        f.raw_upload()?;
        f.raw_download()?;
        let (a, b) = (std::fs::read(&f.file)?, std::fs::read(&f.out)?);
        if a != b {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the downloaded object differs from the snapshot file",
            ));
        }
        f.upload_packed(&f.file, &f.base_key)?;
        Ok(f)
    }

    /// Bytes of the snapshot file (what one upload or download moves).
    ///
    /// # Errors
    ///
    /// `stat`'s errors.
    pub fn bytes(&self) -> io::Result<u64> {
        Ok(std::fs::metadata(&self.file)?.len())
    }

    /// The region length.
    pub fn region_len(&self) -> u64 {
        self.snap.len()
    }

    /// The `shmsnap` binary the restore row runs, if found.
    pub fn shmsnap(&self) -> Option<&Path> {
        self.shmsnap.as_deref()
    }

    /// The reference: the file's bytes as one multipart upload to `raw/base`.
    ///
    /// # Errors
    ///
    /// Any I/O or store error.
    pub fn raw_upload(&self) -> io::Result<()> {
        self.upload_raw_to(&ObjPath::from(RAW_KEY))
    }

    fn upload_raw_to(&self, key: &ObjPath) -> io::Result<()> {
        let mut file = File::open(&self.file)?;
        self.rt.block_on(async {
            let upload = self.store.put_multipart(key).await.map_err(store_err)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; PART];
            loop {
                w.wait_for_capacity(CONCURRENCY).await.map_err(store_err)?;
                let n = read_full(&mut file, &mut buf)?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n]);
            }
            w.finish().await.map_err(store_err)?;
            Ok(())
        })
    }

    /// Ours: the full snapshot uploaded as the replica uploads a base (packed).
    ///
    /// # Errors
    ///
    /// Any I/O or store error.
    pub fn replica_upload(&self) -> io::Result<()> {
        self.upload_packed(&self.file, &self.base_key)
    }

    /// Ours: the 256 MiB region holding 16 MiB, uploaded as a base (packed).
    ///
    /// # Errors
    ///
    /// Any I/O or store error.
    pub fn sparse_upload(&self) -> io::Result<()> {
        self.upload_packed(
            &self.sparse_file,
            &ObjPath::from("sparse/g/00000000000000000001/base"),
        )
    }

    /// The reference of [`sparse_upload`](Self::sparse_upload): one `PUT` of 16 MiB from
    /// memory.
    ///
    /// # Errors
    ///
    /// Any store error.
    pub fn raw_put_16m(&self) -> io::Result<()> {
        let payload = PutPayload::from(self.data.clone());
        self.rt
            .block_on(self.store.put(&ObjPath::from("raw/16m"), payload))
            .map_err(store_err)?;
        Ok(())
    }

    /// (packed object bytes, data bytes) of the sparse snapshot.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn sparse_packing(&self) -> io::Result<(u64, u64)> {
        let plan = Plan::of(File::open(&self.sparse_file)?)?;
        Ok((plan.len(), plan.data_len()))
    }

    /// The host's upload of a base: packed, one `PUT` up to [`SINGLE_PUT_MAX`], else parts of
    /// [`PART`] with two in flight.
    fn upload_packed(&self, path: &Path, key: &ObjPath) -> io::Result<()> {
        let file = File::open(path)?;
        let plan = Plan::of(&file)?;
        let len = plan.len();
        let read = |at: u64, n: usize| -> io::Result<Vec<u8>> {
            let mut buf = vec![0u8; n];
            plan.read_at(&file, at, &mut buf)?;
            Ok(buf)
        };
        self.rt.block_on(async {
            if len <= SINGLE_PUT_MAX {
                let bytes = read(0, len as usize)?;
                self.store
                    .put(key, PutPayload::from(bytes))
                    .await
                    .map_err(store_err)?;
                return Ok(());
            }
            let upload = self.store.put_multipart(key).await.map_err(store_err)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut at = 0;
            while at < len {
                w.wait_for_capacity(2).await.map_err(store_err)?;
                let n = (len - at).min(PART as u64) as usize;
                w.write(&read(at, n)?);
                at += n as u64;
            }
            w.finish().await.map_err(store_err)?;
            Ok(())
        })
    }

    /// The reference: `GET` of the base object streamed into a fresh file, `fdatasync`.
    ///
    /// # Errors
    ///
    /// Any I/O or store error.
    pub fn raw_download(&self) -> io::Result<()> {
        let _ = std::fs::remove_file(&self.out);
        let mut out = File::create(&self.out)?;
        self.rt.block_on(async {
            let got = self
                .store
                .get(&ObjPath::from(RAW_KEY))
                .await
                .map_err(store_err)?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk.map_err(store_err)?)?;
            }
            Ok::<_, io::Error>(())
        })?;
        rustix::fs::fdatasync(&out)?;
        Ok(())
    }

    /// Ours: `shmsnap restore --from s3://bench/replica --to OUT`; `None` without the binary.
    ///
    /// # Errors
    ///
    /// Spawn errors; `Other` with its stderr if the restore fails.
    pub fn restore(&self) -> Option<io::Result<()>> {
        let bin = self.shmsnap.as_ref()?;
        let _ = std::fs::remove_file(&self.out);
        let mut cmd = Command::new(bin);
        cmd.args([
            "restore",
            "--from",
            &format!("s3://{BUCKET}/{PREFIX}"),
            "--to",
        ])
        .arg(&self.out)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        self.server.env(&mut cmd);
        Some(cmd.output().and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "shmsnap restore: {}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )))
            }
        }))
    }
}

impl Drop for ReplicaFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.out);
        // `shmsnap restore` locks OUT through `OUT.lock` (empty, left in place as the host's is).
        let mut lock = self.out.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
