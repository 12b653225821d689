//! One writer per prefix: the lease object `PREFIX/lease`.
//!
//! The lease is a small JSON object `{"holder": {...}, "expires_unix_ms": N}`. A host:
//!
//! - **takes** it with a create-only put (`PutMode::Create`, S3 `If-None-Match: *`) when there
//!   is none; over an existing one (a conditional update, `PutMode::Update`, S3 `If-Match` on
//!   its e-tag) only if it expired, or if its holder is on the same machine with the same
//!   canonical state path (a restarted host: the local `flock` on the state file already
//!   guarantees one host per state file on a machine);
//! - **renews** it every third of its lifetime with a conditional update on the e-tag it got
//!   back; a refused renew (412: someone else wrote the lease) means the lease is **lost**: the
//!   uploader stops and says so;
//! - never deletes it (an expired lease is as good as none, and deleting races with a taker).
//!
//! The `file://` backend has no conditional update (`object_store`'s local store refuses
//! `PutMode::Update`). There, taking an existing lease and renewing are a read, a compare with
//! what this host wrote, and an overwrite: two hosts racing inside that window can both believe
//! they hold it. Creating the first lease is still exclusive (a hard link). Use `file://` for one
//! machine or for tests; S3 for a shared prefix.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::layout::lease_key;
use super::Replica;

/// How long a lease lasts without a renew.
pub const TTL: Duration = Duration::from_secs(30);

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// `/etc/machine-id` (or the host name when there is none).
    pub machine_id: String,
    /// The canonical path of the state file.
    pub state_path: String,
    /// The host's pid.
    pub pid: u32,
}

impl Holder {
    /// This process, for `state` (canonicalized when it exists, else its parent is).
    pub fn this(state: &std::path::Path) -> Holder {
        let machine_id = std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_default();
        Holder {
            machine_id,
            state_path: canonical(state),
            pid: std::process::id(),
        }
    }

    /// `true` if `self` may take over a lease `other` holds before it expires.
    fn same_place(&self, other: &Holder) -> bool {
        !self.machine_id.is_empty()
            && self.machine_id == other.machine_id
            && self.state_path == other.state_path
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on machine {} for {}",
            self.pid, self.machine_id, self.state_path
        )
    }
}

fn canonical(state: &std::path::Path) -> String {
    let p = std::fs::canonicalize(state).unwrap_or_else(|_| {
        match (state.parent(), state.file_name()) {
            (Some(dir), Some(name)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            })
            .map(|d| d.join(name))
            .unwrap_or_else(|_| state.to_path_buf()),
            _ => state.to_path_buf(),
        }
    });
    p.to_string_lossy().into_owned()
}

/// The lease object's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// The holder.
    pub holder: Holder,
    /// Unix time (ms) after which the lease is free.
    pub expires_unix_ms: u64,
}

impl Body {
    /// `true` once the lease expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_unix_ms
    }
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why the lease could not be taken or kept.
#[derive(Debug)]
pub enum LeaseError {
    /// Another host holds an unexpired lease.
    Held {
        /// The lease's key.
        key: String,
        /// Its content.
        body: Body,
    },
    /// The lease was rewritten by someone else (a renew found another e-tag).
    Lost {
        /// The lease's key.
        key: String,
    },
    /// The lease object is not a lease (not our JSON): refused, never overwritten.
    Foreign {
        /// The lease's key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// The store's error (unreachable, refused credentials, ...).
    Store(object_store::Error),
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseError::Held { key, body } => write!(
                f,
                "the lease {key} is held by {} until {} (another host writes this prefix; \
                 stop it, use another prefix, or wait for the lease to expire)",
                body.holder,
                humantime::format_rfc3339_seconds(
                    UNIX_EPOCH + Duration::from_millis(body.expires_unix_ms)
                )
            ),
            LeaseError::Lost { key } => write!(f, "lost the lease {key}: another host wrote it"),
            LeaseError::Foreign { key, why } => {
                write!(f, "the lease object {key} is not a shmsnap lease ({why}); remove it if it is stale")
            }
            LeaseError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    body: Body,
    /// What the last successful put returned (for `If-Match`).
    version: UpdateVersion,
}

impl Lease {
    /// The holder's body as last written.
    #[cfg(test)]
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// `true` once the lease ran out without a renew (another host may hold it by now).
    pub fn expired(&self) -> bool {
        self.body.expired(now_ms())
    }

    /// When the next renew is due (a third of the lifetime after the last write).
    pub fn renew_due_ms(&self) -> u64 {
        self.body
            .expires_unix_ms
            .saturating_sub(TTL.as_millis() as u64 * 2 / 3)
    }

    /// Takes the lease of `replica` for `holder`.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Held`] if another holder's lease is unexpired, `Foreign` if the object
    /// is not a lease, `Store` for the store's errors (a race lost to another taker shows as
    /// `Held` on the next attempt).
    pub async fn take(replica: &Replica, holder: Holder) -> Result<Lease, LeaseError> {
        let key = lease_key(replica);
        let body = Body {
            holder,
            expires_unix_ms: now_ms() + TTL.as_millis() as u64,
        };
        match read(replica).await? {
            None => {
                let version = put(replica, &body, PutMode::Create).await?;
                Ok(Lease { body, version })
            }
            Some((current, version)) => {
                if !current.expired(now_ms()) && !body.holder.same_place(&current.holder) {
                    return Err(LeaseError::Held {
                        key: key.to_string(),
                        body: current,
                    });
                }
                let version = update(replica, &body, version, &current).await?;
                Ok(Lease { body, version })
            }
        }
    }

    /// Gives the lease up (a stopping host): rewrites it as expired now, so that the next
    /// host, on any machine, may take it at once.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn release(mut self, replica: &Replica) -> Result<(), LeaseError> {
        self.write(replica, now_ms()).await
    }

    /// Extends the lease by [`TTL`] from now.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Lost`] if someone else wrote the lease since; `Store` otherwise (the
    /// lease is still ours until it expires: retry).
    pub async fn renew(&mut self, replica: &Replica) -> Result<(), LeaseError> {
        self.write(replica, now_ms() + TTL.as_millis() as u64).await
    }

    async fn write(&mut self, replica: &Replica, expires_unix_ms: u64) -> Result<(), LeaseError> {
        let body = Body {
            holder: self.body.holder.clone(),
            expires_unix_ms,
        };
        let version = update(replica, &body, self.version.clone(), &self.body).await?;
        self.body = body;
        self.version = version;
        Ok(())
    }
}

/// The lease's content and version, `None` if there is none.
async fn read(replica: &Replica) -> Result<Option<(Body, UpdateVersion)>, LeaseError> {
    let key = lease_key(replica);
    let got = match replica.store.get(&key).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(LeaseError::Store(e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got.bytes().await.map_err(LeaseError::Store)?;
    let body: Body = serde_json::from_slice(&bytes).map_err(|e| LeaseError::Foreign {
        key: key.to_string(),
        why: e.to_string(),
    })?;
    Ok(Some((body, version)))
}

/// Reads the lease for `inspect`.
///
/// # Errors
///
/// As the store's get; `Foreign` for a malformed lease.
pub async fn peek(replica: &Replica) -> Result<Option<Body>, LeaseError> {
    Ok(read(replica).await?.map(|(b, _)| b))
}

async fn put(replica: &Replica, body: &Body, mode: PutMode) -> Result<UpdateVersion, LeaseError> {
    let key = lease_key(replica);
    let json = serde_json::to_vec(body).expect("a lease body always serializes");
    let opts = PutOptions {
        mode,
        ..PutOptions::default()
    };
    match replica
        .store
        .put_opts(&key, PutPayload::from(json), opts)
        .await
    {
        Ok(r) => Ok(UpdateVersion {
            e_tag: r.e_tag,
            version: r.version,
        }),
        // Someone else created or rewrote it between our read and this put.
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => match read(replica).await? {
            Some((current, _)) => Err(LeaseError::Held {
                key: key.to_string(),
                body: current,
            }),
            None => Err(LeaseError::Lost {
                key: key.to_string(),
            }),
        },
        Err(e) => Err(LeaseError::Store(e)),
    }
}

/// A conditional update (`If-Match`), or on a store without one (`file://`) a re-read,
/// compare with `expected`, and overwrite (the weaker guarantee the module docs describe).
async fn update(
    replica: &Replica,
    body: &Body,
    version: UpdateVersion,
    expected: &Body,
) -> Result<UpdateVersion, LeaseError> {
    let key = lease_key(replica);
    if !replica.local {
        return match put(replica, body, PutMode::Update(version)).await {
            Err(LeaseError::Held { .. }) => Err(LeaseError::Lost {
                key: key.to_string(),
            }),
            other => other,
        };
    }
    match read(replica).await? {
        Some((current, _)) if &current == expected => put(replica, body, PutMode::Overwrite).await,
        _ => Err(LeaseError::Lost {
            key: key.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(machine: &str, path: &str, pid: u32) -> Holder {
        Holder {
            machine_id: machine.into(),
            state_path: path.into(),
            pid,
        }
    }

    fn local() -> (tempfile::TempDir, Replica) {
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(&format!("file://{}", dir.path().display())).unwrap();
        (dir, r)
    }

    #[test]
    fn a_second_holder_is_refused_until_the_lease_expires_and_a_restart_takes_over() {
        let rt = super::super::runtime().unwrap();
        let (_dir, r) = local();
        let first = rt.block_on(Lease::take(&r, holder("m1", "/s", 1))).unwrap();
        let e = rt
            .block_on(Lease::take(&r, holder("m2", "/s", 2)))
            .unwrap_err();
        match &e {
            LeaseError::Held { key, body } => {
                assert_eq!(key, "lease");
                assert_eq!(body.holder, first.body().holder);
            }
            other => panic!("expected Held, got {other}"),
        }
        assert!(e.to_string().contains("pid 1 on machine m1"), "{e}");
        // Same machine and state path (a restarted host): takes over at once.
        let mut again = rt.block_on(Lease::take(&r, holder("m1", "/s", 3))).unwrap();
        // The first holder's renew now fails: its lease was rewritten.
        let mut first = first;
        assert!(matches!(
            rt.block_on(first.renew(&r)),
            Err(LeaseError::Lost { .. })
        ));
        rt.block_on(again.renew(&r)).unwrap();
    }

    #[test]
    fn an_expired_lease_is_free_and_garbage_is_refused_not_overwritten() {
        let rt = super::super::runtime().unwrap();
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
}
