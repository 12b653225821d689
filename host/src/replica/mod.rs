//! Replicas in S3-compatible object storage (issue 14, DESIGN §12): every persisted point is
//! shipped to a bucket by its own thread; a new machine starts from the bucket.
//!
//! | module | idea |
//! |---|---|
//! | `mod` (here) | [`Replica`]: a URL opened as an `object_store` store plus the key prefix |
//! | [`layout`] | object names (`PREFIX/g/<gen>/base`, `PREFIX/g/<gen>/d/<index>`), listing |
//! | [`lease`] | one writer per prefix: the lease object, taken, renewed, lost |
//! | [`upload`] | the uploader thread and its bounded backlog of points ([`Shipper`]) |
//! | [`restore`] | `restore --from URL`: a point of the bucket as a standalone snapshot file |
//! | [`inspect`] | `inspect --replica URL` |
//!
//! `object_store` is async; the host is not. Each user of a [`Replica`] runs a current-thread
//! tokio runtime ([`runtime`]) on its own thread and `block_on`s one request at a time.
//!
//! Byte layout of the bucket: `docs/FORMAT.md`, "Replica layout".

pub mod inspect;
pub mod layout;
pub mod lease;
pub mod restore;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use shmsnap_linux::persist::Persister;
use tracing::{info, warn};

use crate::exit::{Code, Failure};
use lease::{Holder, Lease, LeaseError};
use upload::{Keep, Shipper};

/// An opened replica: where its objects are and how to reach them.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The store (S3 or the local file system).
    pub store: Arc<dyn ObjectStore>,
    /// Every key of this replica starts with it (empty for the bucket's root).
    pub prefix: Key,
    /// The URL as the user gave it, for messages.
    pub url: String,
    /// `true` for `file://`: no conditional update (see [`lease`]).
    pub local: bool,
}

/// A current-thread tokio runtime with timers and I/O (what `object_store` needs).
///
/// # Errors
///
/// [`Code::OsErr`] if the runtime cannot be built (epoll, eventfd).
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::new(
                Code::OsErr,
                format!("cannot start the replica runtime: {e}"),
            )
        })
}

/// How long one request may take, and how often `object_store` itself retries one: short,
/// because the uploader has its own backoff and a CLI command should fail promptly.
fn client_options() -> (ClientOptions, RetryConfig) {
    let options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(60));
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(15),
        ..RetryConfig::default()
    };
    (options, retry)
}

impl Replica {
    /// Opens `url`: `s3://BUCKET/PREFIX` (configured from the `AWS_*` environment, region
    /// `us-east-1` when unset, plain `http://` endpoints only with `AWS_ALLOW_HTTP=true`) or
    /// `file:///ABS/PATH` (created if missing). Makes no request.
    ///
    /// # Errors
    ///
    /// [`Code::Usage`] for another scheme or a malformed URL; [`Code::Config`] for a
    /// configuration `object_store` refuses or a plain-http endpoint without `AWS_ALLOW_HTTP`;
    /// [`Code::CantCreat`] if a `file://` directory cannot be created.
    pub fn open(url: &str) -> Result<Replica, Failure> {
        if let Some(path) = url.strip_prefix("file://") {
            return open_local(url, path);
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(Failure::new(
                Code::Usage,
                format!("replica URL {url}: expected s3://BUCKET/PREFIX or file:///ABS/PATH"),
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Failure::new(
                Code::Usage,
                format!("replica URL {url}: no bucket name (expected s3://BUCKET/PREFIX)"),
            ));
        }
        let allow_http = check_plain_http(url)?;
        let (options, retry) = client_options();
        // `with_client_options` replaces what `from_env` read into the client options.
        let options = options.with_allow_http(allow_http);
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(options)
            .with_retry(retry);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        let store = builder.build().map_err(|e| {
            Failure::new(
                Code::Config,
                format!("replica {url}: cannot configure S3 from the AWS_* environment: {e}"),
            )
        })?;
        Ok(Replica {
            store: Arc::new(store),
            prefix: key_prefix(url, prefix)?,
            url: url.to_owned(),
            local: false,
        })
    }

    /// `PREFIX/rest` (or `rest` for an empty prefix).
    pub fn key(&self, rest: &str) -> Key {
        rest.split('/')
            .fold(self.prefix.clone(), |k, part| k.join(part))
    }
}

fn open_local(url: &str, path: &str) -> Result<Replica, Failure> {
    if !path.starts_with('/') {
        return Err(Failure::new(
            Code::Usage,
            format!("replica URL {url}: a file URL needs an absolute path (file:///ABS/PATH)"),
        ));
    }
    std::fs::create_dir_all(path).map_err(|e| {
        Failure::new(
            Code::CantCreat,
            format!("replica {url}: cannot create the directory {path}: {e}"),
        )
    })?;
    let store = LocalFileSystem::new_with_prefix(path)
        .map_err(|e| Failure::new(Code::CantCreat, format!("replica {url}: {e}")))?;
    Ok(Replica {
        store: Arc::new(store),
        prefix: Key::default(),
        url: url.to_owned(),
        local: true,
    })
}

fn key_prefix(url: &str, prefix: &str) -> Result<Key, Failure> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(Key::default());
    }
    Key::parse(trimmed).map_err(|e| {
        Failure::new(
            Code::Usage,
            format!("replica URL {url}: bad prefix {prefix:?}: {e}"),
        )
    })
}

/// `object_store` refuses a plain-http endpoint without `AWS_ALLOW_HTTP`, at the first request
/// and in its own words; say it before anything starts, in ours. Returns whether plain http
/// is allowed.
fn check_plain_http(url: &str) -> Result<bool, Failure> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .unwrap_or_default();
    let allowed = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if endpoint.starts_with("http://") && !allowed {
        return Err(Failure::new(
            Code::Config,
            format!(
                "replica {url}: the endpoint {endpoint} is plain http (unencrypted); set \
                 AWS_ALLOW_HTTP=true to allow it, or use https"
            ),
        ));
    }
    Ok(allowed)
}

/// `true` if `e` says the credentials were refused (HTTP 401 or 403).
/// Some requests (listing) report the status only inside a generic error's text.
pub fn is_refused(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => true,
        object_store::Error::Generic { .. } => {
            let text = e.to_string();
            text.contains("403 Forbidden") || text.contains("401 Unauthorized")
        }
        _ => false,
    }
}

/// The failure for refused credentials: exit 78 naming the URL.
pub fn refused(url: &str, e: &object_store::Error) -> Failure {
    Failure::new(
        Code::Config,
        format!(
            "replica {url}: the credentials were refused (AWS_ACCESS_KEY_ID / \
             AWS_SECRET_ACCESS_KEY): {e}"
        ),
    )
}

/// A replica opened by `run` before the client starts: the lease taken (or `None` if the
/// replica was unreachable), ready to become the uploader thread.
#[derive(Debug)]
pub struct Started {
    replica: Replica,
    rt: tokio::runtime::Runtime,
    lease: Option<Lease>,
    holder: Holder,
    keep: Keep,
}

/// `run --replica URL`, before the client starts: opens the replica, takes its lease, and if
/// the state file has no generation, restores the newest sound point of the replica into it
/// (with `fallback`, an older one past a corrupt object).
///
/// # Errors
///
/// 75 if another host holds the lease (named with its holder), 78 for refused credentials,
/// 65 for a corrupt replica without `fallback`, the URL's errors. An unreachable replica is
/// not an error: it is logged, and the uploader keeps trying.
pub fn start(
    url: &str,
    keep: Keep,
    persister: &Persister,
    fallback: bool,
) -> Result<Started, Failure> {
    let replica = Replica::open(url)?;
    let rt = runtime()?;
    let holder = Holder::this(&persister.target());
    let lease = match rt.block_on(Lease::take(&replica, holder.clone())) {
        Ok(l) => Some(l),
        Err(LeaseError::Store(e)) if is_refused(&e) => return Err(refused(url, &e)),
        Err(LeaseError::Store(e)) => {
            warn!("replica {url} is unreachable ({e}); local snapshots go on, uploads are retried");
            None
        }
        Err(e @ (LeaseError::Held { .. } | LeaseError::Lost { .. })) => {
            return Err(Failure::new(Code::TempFail, format!("replica {url}: {e}")))
        }
        Err(e @ LeaseError::Foreign { .. }) => {
            return Err(Failure::new(Code::DataErr, format!("replica {url}: {e}")))
        }
    };
    let empty = persister
        .generations()
        .map_err(|e| Failure::new(Code::IoErr, format!("cannot list the state files: {e}")))?
        .is_empty();
    if empty {
        restore_at_start(&rt, &replica, persister, lease.is_some(), fallback)?;
    }
    Ok(Started {
        replica,
        rt,
        lease,
        holder,
        keep,
    })
}

fn restore_at_start(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    persister: &Persister,
    reachable: bool,
    fallback: bool,
) -> Result<(), Failure> {
    let target = persister.target();
    if !reachable {
        warn!(
            "{} is missing and replica {} is unreachable: starting empty",
            target.display(),
            replica.url
        );
        return Ok(());
    }
    match restore::fetch_into(rt, replica, persister, None, fallback) {
        Ok(f) => {
            info!(
                "{} was missing: restored {} from replica {} (taken {})",
                target.display(),
                f.point,
                replica.url,
                crate::restore::rfc3339(f.unix_time_ns)
            );
            Ok(())
        }
        Err(f) if f.code == Code::NoInput => {
            info!(
                "replica {} holds no snapshot yet: starting empty",
                replica.url
            );
            Ok(())
        }
        Err(f) if f.code == Code::IoErr => {
            warn!("{f}: starting empty");
            Ok(())
        }
        Err(f) => Err(f),
    }
}

impl Started {
    /// Starts the uploader thread.
    ///
    /// # Errors
    ///
    /// As [`Shipper::spawn`].
    pub fn spawn(
        self,
        metrics: crate::metrics::Metrics,
        status: crate::durable::SharedPublisher,
    ) -> Result<Shipper, Failure> {
        Shipper::spawn(
            self.replica,
            self.rt,
            self.lease,
            self.holder,
            self.keep,
            metrics,
            status,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_other_than_s3_and_absolute_file_are_usage_errors() {
        for bad in [
            "http://x/y",
            "s3:///prefix",
            "file://relative/path",
            "gs://b/p",
        ] {
            let e = Replica::open(bad).unwrap_err();
            assert_eq!(e.code, Code::Usage, "{bad}: {e}");
            assert!(e.message.contains(bad), "{e}");
        }
    }

    #[test]
    fn s3_prefix_becomes_the_key_prefix() {
        let r = Replica::open("s3://bucket/some/prefix/").unwrap();
        assert_eq!(r.prefix.as_ref(), "some/prefix");
        assert_eq!(r.key("g/1/base").as_ref(), "some/prefix/g/1/base");
        let root = Replica::open("s3://bucket").unwrap();
        assert_eq!(root.key("lease").as_ref(), "lease");
    }
}
