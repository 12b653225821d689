//! A real S3-compatible server for the replica tests: `s3s-fs` (0.14.1) on 127.0.0.1, one
//! temporary directory per server, each subdirectory a bucket. Objects are plain files at
//! `DIR/BUCKET/KEY` (a `/` in a key is a subdirectory); s3s-fs keeps its metadata (e-tags,
//! upload parts) in dot-files at the top of `DIR`, outside every bucket, so a test may count,
//! read and corrupt objects directly on disk.
//!
//! The binary comes from `SHMSNAP_S3S_FS`, else `PATH`. Without it the tests are skipped with a
//! loud message, except under `CI`, where `.ci/run` installs it and a missing server fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key every fixture server accepts.
pub const ACCESS_KEY: &str = "shmsnap-test-key";
/// The secret key every fixture server accepts.
pub const SECRET_KEY: &str = "shmsnap-test-secret";
/// The region the clients sign for (s3s-fs accepts any).
pub const REGION: &str = "us-east-1";

/// The `s3s-fs` binary: `SHMSNAP_S3S_FS`, else the first `s3s-fs` on `PATH`; `None` (with a
/// loud message) if there is none, and a panic instead when `CI` is set.
pub fn s3s_fs_binary() -> Option<PathBuf> {
    let found = match std::env::var_os("SHMSNAP_S3S_FS") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "SHMSNAP_S3S_FS={} is not a file", p.display());
            Some(p)
        }
        None => std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("s3s-fs"))
                .find(|p| p.is_file())
        }),
    };
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "s3s-fs is not installed, and CI is set: .ci/run installs it (cargo install s3s-fs \
             --version 0.14.1 --features binary) and exports SHMSNAP_S3S_FS"
        );
        eprintln!(
            "SKIPPED: s3s-fs not found (set SHMSNAP_S3S_FS or put it on PATH; \
             `cargo install s3s-fs --version 0.14.1 --features binary --locked`)"
        );
    }
    found
}

/// A running (or stopped) `s3s-fs` over its own temporary directory, on a fixed port for its
/// whole life; killed and reaped on drop.
pub struct S3Server {
    bin: PathBuf,
    /// The data directory (`DIR/BUCKET/KEY`); removed on drop.
    dir: tempfile::TempDir,
    /// The port, kept across `stop()`/`start()` so that clients need no new settings.
    port: u16,
    /// The server process while it runs.
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server with one bucket `bucket`; `None` when s3s-fs is not installed (see
    /// [`s3s_fs_binary`]).
    pub fn start_with_bucket(bucket: &str) -> Option<S3Server> {
        let bin = s3s_fs_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("shmsnap-s3-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let mut s = S3Server {
            bin,
            dir,
            port,
            child: None,
        };
        s.add_bucket(bucket);
        // A port found free may be taken by another test before the server binds it: the
        // first start tries a few fresh ports (restarts keep theirs).
        let end = Instant::now() + Duration::from_secs(30);
        let mut why = String::new();
        for _ in 0..5 {
            match s.try_start(end) {
                Ok(()) => return Some(s),
                Err(e) => why = e,
            }
            s.port = free_port();
        }
        panic!("s3s-fs did not start on 5 ports: {why}");
    }

    /// Creates bucket `name` (a directory, which is all a bucket is to s3s-fs).
    pub fn add_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.dir.path().join(name)).expect("mkdir bucket");
    }

    /// Starts the server (again) on its port and directory; returns once it accepts
    /// connections, panics with its output if it exits or never listens.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "s3s-fs is already running");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_start(end) {
                Ok(()) => return,
                // The port of a just-stopped server may linger a moment: try again.
                Err(why) if Instant::now() < end => {
                    eprintln!("s3s-fs did not start ({why}); retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(why) => panic!("s3s-fs on port {} did not start: {why}", self.port),
            }
        }
    }

    /// One attempt to start the server on its port, waiting for it until `end`.
    fn try_start(&mut self, end: Instant) -> Result<(), String> {
        let mut child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        wait_listening(&mut child, self.port, end, &self.log_path())?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server (SIGKILL and reap): the port refuses connections until [`start`].
    ///
    /// [`start`]: S3Server::start
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's log (its stderr, appended across restarts): a file at the top of the
    /// data directory, which s3s-fs ignores (only directories are buckets).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("s3s-fs.log")
    }

    fn log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("s3s-fs log")
    }

    /// Whether the server process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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

    /// The S3 settings for a client of this server, as the host reads them: set on `cmd`,
    /// with every other `AWS_*` variable of the test's environment removed.
    pub fn env(&self, cmd: &mut Command) {
        self.env_with(cmd, ACCESS_KEY, SECRET_KEY);
    }

    /// Like [`env`], with the given credentials (to test refused ones).
    ///
    /// [`env`]: S3Server::env
    pub fn env_with(&self, cmd: &mut Command, access: &str, secret: &str) {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("AWS_ACCESS_KEY_ID", access)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", REGION)
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ALLOW_HTTP", "true");
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

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on right now (bound to port 0 and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Waits until `child` accepts connections on `port`; `Err` if it exits first (reaped, its
/// stderr returned) or `end` passes (killed).
fn wait_listening(child: &mut Child, port: u16, end: Instant, log: &Path) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let err = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("exited with {status}: {err}"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Err("not listening after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
