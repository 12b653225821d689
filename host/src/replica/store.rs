//! A replica's URL opened as an `object_store` store plus its key prefix ([`Replica`]), the
//! tokio runtime its users block on, and how refusals (credentials, bucket) read.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use crate::exit::{Code, Failure};

/// An opened replica: where its objects are and how to reach them.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The store (S3 or the local file system), for points: requests may take a while.
    pub store: Arc<dyn ObjectStore>,
    /// The same store for the lease and the probe: short timeouts, no retries (the lease
    /// code resolves every doubt itself, well within the lease's lifetime).
    pub lease_store: Arc<dyn ObjectStore>,
    /// The S3 client itself (`None` for `file://`): multipart uploads are listed through it.
    pub s3: Option<Arc<AmazonS3>>,
    /// Every key of this replica starts with it (empty for the bucket's root).
    pub prefix: Key,
    /// The URL as the user gave it, for messages.
    pub url: String,
    /// `true` for `file://`: no conditional update (see [`super::lease`]).
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

/// How long one request for a point may take, and how often `object_store` itself retries
/// one: short, because the uploader has its own backoff and a CLI command should fail
/// promptly.
fn client_options() -> (ClientOptions, RetryConfig) {
    let s = Duration::from_secs;
    limits(s(5), s(60), 2, s(15))
}

/// The lease client's limits: one request answers within `timeout` or fails (a tenth of the
/// lease's lifetime, [`super::lease::Timing::request_timeout`]), and is not retried by
/// `object_store` (a retried conditional write would be refused by its own first attempt;
/// [`super::lease`] reads the lease back instead).
fn lease_client_options(timeout: Duration) -> (ClientOptions, RetryConfig) {
    limits(timeout.min(Duration::from_secs(2)), timeout, 0, timeout)
}

/// A client's limits: connect and request timeouts, and `object_store`'s own retries (how
/// many, within how long).
fn limits(
    connect: Duration,
    request: Duration,
    retries: usize,
    retry_for: Duration,
) -> (ClientOptions, RetryConfig) {
    let options = ClientOptions::new()
        .with_connect_timeout(connect)
        .with_timeout(request);
    let retry = RetryConfig {
        max_retries: retries,
        retry_timeout: retry_for,
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
        Self::open_with(url, Duration::from_secs(3))
    }

    /// [`open`](Self::open) with lease requests timing out after `lease_timeout`.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_with(url: &str, lease_timeout: Duration) -> Result<Replica, Failure> {
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
        let store = Arc::new(s3_client(url, bucket, allow_http, client_options())?);
        let lease_store = s3_client(url, bucket, allow_http, lease_client_options(lease_timeout))?;
        Ok(Replica {
            store: store.clone(),
            lease_store: Arc::new(lease_store),
            s3: Some(store),
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

/// An S3 client for `bucket` from the `AWS_*` environment with the given limits.
fn s3_client(
    url: &str,
    bucket: &str,
    allow_http: bool,
    (options, retry): (ClientOptions, RetryConfig),
) -> Result<AmazonS3, Failure> {
    // `with_client_options` replaces what `from_env` read into the client options.
    let options = options.with_allow_http(allow_http);
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_client_options(options)
        .with_retry(retry);
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    builder.build().map_err(|e| {
        Failure::new(
            Code::Config,
            format!("replica {url}: cannot configure S3 from the AWS_* environment: {e}"),
        )
    })
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
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    Ok(Replica {
        store: store.clone(),
        lease_store: store,
        s3: None,
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
