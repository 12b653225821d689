//! The store probe: before a host relies on conditional writes (the lease), it checks that
//! the store honours them, on the replica's own prefix, with a key of its own
//! (`PREFIX/.probe/<run id>`, removed afterwards):
//!
//! 1. a create-only put (`If-None-Match: *`) of the key: must succeed (a missing bucket shows
//!    here, as a 404: [`ProbeError::NoBucket`]);
//! 2. the same create-only put again: must be **refused** — a store that accepts it ignores
//!    `If-None-Match`, and two hosts could both create the lease;
//! 3. a conditional update (`If-Match`) on the e-tag of step 1: must succeed;
//! 4. the same update again (its e-tag is now stale): must be **refused** — a store that
//!    accepts it ignores `If-Match`, and two hosts could both renew one lease.
//!
//! `file://` has no conditional update: steps 3 and 4 are skipped there and the start says
//! so (its lease is read-compare-overwrite, see [`super::lease`]).

use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::store::Replica;

/// Why the store cannot carry a lease.
#[derive(Debug)]
pub enum ProbeError {
    /// The bucket does not exist.
    NoBucket {
        /// The bucket's URL.
        url: String,
        /// The store's answer.
        source: object_store::Error,
    },
    /// The store accepted a write it must refuse.
    Unsupported {
        /// The URL.
        url: String,
        /// Which header the store ignores, in words.
        behaviour: &'static str,
    },
    /// The store's error (unreachable, credentials, ...): the probe did not finish.
    Store(object_store::Error),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::NoBucket { url, source } => write!(
                f,
                "replica {url}: the bucket does not exist (check its name; create it first): \
                 {source}"
            ),
            ProbeError::Unsupported { url, behaviour } => write!(
                f,
                "replica {url}: this store {behaviour}; the lease that keeps one writer per \
                 prefix needs conditional writes (S3 If-None-Match / If-Match), so this store \
                 cannot be used as a replica"
            ),
            ProbeError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// Runs the probe with key `PREFIX/.probe/<run_id>` (module docs); the key is removed
/// whatever the outcome (best effort).
///
/// # Errors
///
/// As [`ProbeError`].
pub async fn probe(replica: &Replica, run_id: &str) -> Result<(), ProbeError> {
    let key = replica.key(&format!(".probe/{run_id}"));
    let result = steps(replica, &key).await;
    if !matches!(result, Err(ProbeError::NoBucket { .. })) {
        let _ = replica.lease_store.delete(&key).await;
    }
    result
}

async fn steps(replica: &Replica, key: &Key) -> Result<(), ProbeError> {
    let store = &replica.lease_store;
    let put = |mode: PutMode, body: &'static [u8]| {
        store.put_opts(
            key,
            PutPayload::from_static(body),
            PutOptions {
                mode,
                ..PutOptions::default()
            },
        )
    };
    let first = match put(PutMode::Create, b"probe 1").await {
        Ok(r) => r,
        Err(e @ object_store::Error::NotFound { .. }) => {
            return Err(ProbeError::NoBucket {
                url: replica.url.clone(),
                source: e,
            })
        }
        Err(e) => return Err(ProbeError::Store(e)),
    };
    match put(PutMode::Create, b"probe 2").await {
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => {}
        Ok(_) => {
            return Err(ProbeError::Unsupported {
                url: replica.url.clone(),
                behaviour: "ignores If-None-Match: * (a create-only put replaced an existing \
                            object)",
            })
        }
        Err(e) => return Err(ProbeError::Store(e)),
    }
    if replica.local {
        return Ok(());
    }
    let v1 = UpdateVersion {
        e_tag: first.e_tag,
        version: first.version,
    };
    if v1.e_tag.is_none() && v1.version.is_none() {
        return Err(ProbeError::Unsupported {
            url: replica.url.clone(),
            behaviour: "returns no e-tag for a put (If-Match cannot be used)",
        });
    }
    match put(PutMode::Update(v1.clone()), b"probe 3").await {
        Ok(_) => {}
        Err(object_store::Error::Precondition { .. }) => {
            return Err(ProbeError::Unsupported {
                url: replica.url.clone(),
                behaviour: "refuses If-Match with the object's current e-tag",
            })
        }
        Err(e) => return Err(ProbeError::Store(e)),
    }
    match put(PutMode::Update(v1), b"probe 4").await {
        Err(object_store::Error::Precondition { .. }) => Ok(()),
        Ok(_) => Err(ProbeError::Unsupported {
            url: replica.url.clone(),
            behaviour: "ignores If-Match (an update with a stale e-tag replaced the object)",
        }),
        Err(e) => Err(ProbeError::Store(e)),
    }
}
