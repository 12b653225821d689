//! Incomplete multipart uploads: listed and aborted at start, so that the parts of a host
//! killed mid-upload are not billed forever.
//!
//! `object_store` 0.14 can abort an upload ([`MultipartStore::abort_multipart`]) but cannot
//! list them. S3 lists them with `GET /BUCKET?uploads&prefix=P` (`ListMultipartUploads`): the
//! request is signed through `object_store`'s own signer ([`Signer::signed_url_opts`], the
//! query in the signature) and sent with `object_store`'s HTTP client, so the credentials,
//! endpoint and TLS settings are the store's. The answer is S3's XML.
//!
//! Only uploads under `PREFIX/g/` that were initiated more than [`MIN_AGE`] ago are aborted:
//! the host holds the lease when it sweeps, so they cannot be another live host's (its lease
//! would have been refused); the age guards against a clock that differs between host and
//! store, and a previous holder finishing its last part as its lease ran out.
//!
//! `file://` has no multipart uploads to list (`object_store`'s local store writes a staging
//! file it removes on abort; one left by a killed host is never listed as an object).

use std::time::Duration;

use object_store::client::{HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::multipart::MultipartStore;
use object_store::signer::{SignedUrlOptions, Signer};
use serde::Deserialize;
use tracing::{info, warn};

use super::store::Replica;

/// An incomplete upload younger than this is left alone (module docs).
pub const MIN_AGE: Duration = Duration::from_secs(120);

/// One incomplete upload, as S3 lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Upload {
    /// The object's key.
    pub key: String,
    /// The upload's id.
    pub upload_id: String,
    /// When it was started (RFC 3339).
    pub initiated: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListResult {
    #[serde(default, rename = "Upload")]
    uploads: Vec<Upload>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
}

fn generic(e: impl std::fmt::Display) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: e.to_string().into(),
    }
}

/// Every incomplete multipart upload under `PREFIX/g/` (all pages). Empty for `file://`.
///
/// # Errors
///
/// The store's error, or an answer that is not S3's XML.
pub async fn list(replica: &Replica) -> object_store::Result<Vec<Upload>> {
    let Some(s3) = &replica.s3 else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}/", replica.key("g"));
    let client = ReqwestConnector::default().connect(
        &object_store::ClientOptions::new()
            .with_allow_http(true)
            .with_timeout(Duration::from_secs(30)),
    )?;
    let mut out = Vec::new();
    let mut markers: Option<(String, String)> = None;
    loop {
        let mut query = vec![
            ("uploads".to_owned(), String::new()),
            ("prefix".to_owned(), prefix.clone()),
        ];
        if let Some((k, u)) = &markers {
            query.push(("key-marker".to_owned(), k.clone()));
            query.push(("upload-id-marker".to_owned(), u.clone()));
        }
        let options = SignedUrlOptions::default().with_query(query);
        let url = s3
            .signed_url_opts(
                http::Method::GET,
                &object_store::path::Path::default(),
                Duration::from_secs(300),
                &options,
            )
            .await?;
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .body(HttpRequestBody::empty())
            .map_err(generic)?;
        let response = client.execute(request).await.map_err(generic)?;
        let status = response.status();
        let body = response.into_body().bytes().await.map_err(generic)?;
        if !status.is_success() {
            return Err(generic(format!(
                "ListMultipartUploads answered {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )));
        }
        let page: ListResult = quick_xml::de::from_reader(body.as_ref()).map_err(generic)?;
        out.extend(page.uploads);
        match (
            page.is_truncated,
            page.next_key_marker,
            page.next_upload_id_marker,
        ) {
            (true, Some(k), Some(u)) => markers = Some((k, u)),
            _ => return Ok(out),
        }
    }
}

/// Aborts the incomplete uploads under `PREFIX/g/` older than [`MIN_AGE`]; returns their keys.
///
/// # Errors
///
/// The store's error (what was aborted stays aborted).
pub async fn sweep(replica: &Replica) -> object_store::Result<Vec<String>> {
    let Some(s3) = &replica.s3 else {
        return Ok(Vec::new());
    };
    let now = chrono::Utc::now();
    let mut aborted = Vec::new();
    for u in list(replica).await? {
        let old = chrono::DateTime::parse_from_rfc3339(&u.initiated).is_ok_and(|t| {
            (now - t.with_timezone(&chrono::Utc))
                .to_std()
                .is_ok_and(|age| age >= MIN_AGE)
        });
        if !old {
            continue;
        }
        let key = object_store::path::Path::from(u.key.as_str());
        s3.abort_multipart(&key, &u.upload_id).await?;
        aborted.push(u.key);
    }
    Ok(aborted)
}

/// [`sweep`] at start, logged; a failure is a warning (the bucket's lifecycle rule, if any,
/// is the fallback).
pub fn sweep_logged(rt: &tokio::runtime::Runtime, replica: &Replica) {
    match rt.block_on(sweep(replica)) {
        Ok(keys) if keys.is_empty() => {}
        Ok(keys) => info!(
            "replica {}: aborted {} incomplete multipart upload(s) left by an earlier host: {}",
            replica.url,
            keys.len(),
            keys.join(", ")
        ),
        Err(e) => warn!(
            "replica {}: cannot list or abort incomplete multipart uploads ({e}); their parts \
             stay billed until a lifecycle rule removes them",
            replica.url
        ),
    }
}
