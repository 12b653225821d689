//! Fixtures of the `replica` group (issue 14): a real snapshot file of a 256 MiB region
//! (the [`SnapshotFixture`] of the snapshot group, fully touched) against a local `s3s-fs`.
//!
//! - **raw upload** (the reference): `object_store`'s `put_multipart` of the file's bytes
//!   through [`WriteMultipart`] in [`PART`]-byte parts, at most [`CONCURRENCY`] in flight —
//!   the same client and runtime the replica's uploads use.
//! - **replica upload** (ours): the host's upload of the same file as a base object.
//!   *Not wired yet*: see [`ReplicaFixture::replica_upload`].
//! - **restore** (ours): `shmsnap restore --from s3://… --to OUT` (download, footer and CRC
//!   check, rename into place), the real binary in a child process, vs. **raw download**: a
//!   `GET` of the same object streamed into a file, `fdatasync`, no check.
//!
//! The server is `s3s-fs` from `SHMSNAP_S3S_FS`, else `PATH` ([`s3s_fs_binary`]); without it
//! the group is skipped. Its data directory lives in the bench directory (a real disk).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, WriteMultipart};

use crate::snapshot::{SnapshotFixture, Touch};

/// The region (and so the snapshot file) size of the group.
pub const SNAPSHOT_LEN: u64 = 256 << 20;
/// Part size of the raw multipart reference.
pub const PART: usize = 16 << 20;
/// Parts in flight at most, for the raw reference.
pub const CONCURRENCY: usize = 4;
/// The bucket of the fixture server.
pub const BUCKET: &str = "bench";
/// The replica's prefix in [`BUCKET`].
pub const PREFIX: &str = "replica";
const ACCESS_KEY: &str = "shmsnap-bench-key";
const SECRET_KEY: &str = "shmsnap-bench-secret";
const REGION: &str = "us-east-1";

/// The `s3s-fs` binary: `SHMSNAP_S3S_FS`, else the first `s3s-fs` on `PATH`.
pub fn s3s_fs_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHMSNAP_S3S_FS") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
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

/// An `s3s-fs` over `dir` on a free loopback port; killed and reaped on drop, and its
/// directory removed.
#[derive(Debug)]
pub struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Server {
    /// Starts `bin` over `dir` (emptied first) with one bucket, [`BUCKET`].
    ///
    /// # Errors
    ///
    /// Spawn errors; `Other` if the server exits or does not listen within 30 s.
    pub fn start(bin: &Path, dir: &Path) -> io::Result<Server> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join(BUCKET))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(dir)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut s = Server {
            child,
            port,
            dir: dir.to_owned(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = s.child.try_wait()? {
                return Err(io::Error::other(format!("s3s-fs exited: {st}")));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(s);
            }
            if Instant::now() >= end {
                return Err(io::Error::other("s3s-fs did not listen within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 256 MiB snapshot file, the server, the client and the runtime (module docs).
#[derive(Debug)]
pub struct ReplicaFixture {
    /// Keeps the region and its snapshot file.
    snap: SnapshotFixture,
    file: PathBuf,
    /// The replica's key of the file: `PREFIX/g/<generation, 20 digits>/base`.
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
    /// Takes a snapshot of a fully touched 256 MiB region in `dir`, starts `s3s-fs` (binary
    /// `bin`) over `dir/s3s-fs`, puts the snapshot at its replica key with the raw upload and
    /// checks the object reads back byte for byte.
    ///
    /// # Errors
    ///
    /// Any I/O, server or store error; `InvalidData` if the object differs from the file.
    pub fn new(dir: &Path, bin: &Path) -> io::Result<Self> {
        let snap = SnapshotFixture::new(dir, SNAPSHOT_LEN, Touch::Full)?;
        let file = snap.target();
        // The fixture took one snapshot: generation 1.
        let base_key = ObjPath::from(format!("{PREFIX}/g/{:020}/base", 1));
        let server = Server::start(bin, &dir.join("s3s-fs"))?;
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
            base_key,
            server,
            store: Arc::new(store),
            rt,
            out: dir.join("replica-restored.snap"),
            shmsnap: shmsnap_binary(),
        };
        f.upload_raw_to(&f.base_key)?;
        f.raw_download()?;
        let (a, b) = (std::fs::read(&f.file)?, std::fs::read(&f.out)?);
        if a != b {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the downloaded object differs from the snapshot file",
            ));
        }
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
        self.upload_raw_to(&ObjPath::from("raw/base"))
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

    /// Ours: the replica's upload of the snapshot file as a base object.
    ///
    /// `None` until the replica code is reachable from here: the host is a binary crate, and
    /// its upload (`replica::upload::upload`, private, in `host/src`) needs a library entry.
    // REP-LIB: wire the replica's upload here once a library exposes it, e.g.
    //     pub async fn upload_file(replica: &Replica, key: &Path, file: &Path) -> Result<()>
    // called on `self.rt` with a `Replica` opened on this server (the env of `Server::env`),
    // key `ours/g/00000000000000000001/base`, so that the ratio compares the upload paths.
    pub fn replica_upload(&self) -> Option<io::Result<()>> {
        None
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
            let got = self.store.get(&self.base_key).await.map_err(store_err)?;
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
