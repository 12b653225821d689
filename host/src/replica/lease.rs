//! One writer per prefix: the lease object `PREFIX/lease` (`{"holder": {...},
//! "expires_unix_ms": N, "ttl_ms": T, "released": true?}`, docs/FORMAT.md "Lease"): taken
//! with a create-only put (or a conditional update of a released one, of this machine's own
//! state path, or — by a standby, [`super::observe`] — of one seen unchanged for its TTL),
//! renewed with a conditional update on its e-tag, never deleted; every doubtful outcome is
//! resolved by reading the lease back and comparing its run id ([`Renewed`], [`LeaseError`]).
//!
//! Validity is monotonic: a write confirmed by the store makes the lease this run's until
//! the [`Instant`] the write was *sent* plus the TTL ([`Lease::valid_until`]); the wall-clock
//! expiry in the body is for people and for hosts without `--standby` only. Renewing runs on
//! [`super::keeper`]'s thread. `file://` has no conditional update: there the lease is a
//! read, a compare and an overwrite (one machine or tests only). The why, and what a lost
//! lease does: docs/DESIGN.md §12.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::layout::lease_key;
use super::store::Replica;

/// How long a lease lasts without a renew, by default (`run --lease-ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The shortest TTL accepted (from the command line or read from a lease).
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// The longest TTL accepted (from the command line or read from a lease).
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// `true` if `ttl` is within [`MIN_TTL`]..=[`MAX_TTL`].
pub fn ttl_in_bounds(ttl: Duration) -> bool {
    (MIN_TTL..=MAX_TTL).contains(&ttl)
}

/// What a lease of `ttl` implies: how often it is renewed, how long a lease request may
/// take, and how long the lease must still hold for an upload (or part) to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The lease's lifetime without a renew.
    pub ttl: Duration,
}

impl Timing {
    /// A renew is due this long after the last confirmed one was sent (TTL/3).
    pub fn renew_every(self) -> Duration {
        self.ttl / 3
    }

    /// One lease request answers within this or fails (TTL/10, at least 200 ms).
    pub fn request_timeout(self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(200))
    }

    /// No upload or part starts unless the lease holds this much longer (TTL/6).
    pub fn upload_margin(self) -> Duration {
        self.ttl / 6
    }

    /// How often a standby reads the lease (TTL/20, at most 500 ms).
    pub fn poll_every(self) -> Duration {
        (self.ttl / 20).min(Duration::from_millis(500))
    }
}

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// `/etc/machine-id` (or the host name when there is none).
    pub machine_id: String,
    /// The canonical path of the state file.
    pub state_path: String,
    /// The host's pid.
    pub pid: u32,
    /// 128 random bits in hex, drawn once per host run: which run wrote the lease. Empty in
    /// leases written before run ids existed (never equal to a run's own).
    #[serde(default)]
    pub run_id: String,
}

impl Holder {
    /// This process, for `state` (canonicalized when it exists, else its parent is), with a
    /// fresh run id.
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
            run_id: run_id(),
        }
    }

    /// `true` if `self` may take over a lease `other` holds before it expires: the same
    /// machine and state file (the state file's lock says no other run there is alive).
    pub fn same_place(&self, other: &Holder) -> bool {
        !self.machine_id.is_empty()
            && self.machine_id == other.machine_id
            && self.state_path == other.state_path
    }

    /// `true` if `other` is this very run (not merely the same machine and state file).
    pub fn same_run(&self, other: &Holder) -> bool {
        !self.run_id.is_empty() && self.run_id == other.run_id
    }
}

/// 128 bits from the kernel's random source, in hex; the time and pid if that fails (never
/// in practice: `getrandom` blocks only before the pool is initialised).
fn run_id() -> String {
    let mut b = [0u8; 16];
    let filled = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    if filled.is_ok_and(|n| n == b.len()) {
        return b.iter().map(|x| format!("{x:02x}")).collect();
    }
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{ns:032x}-{}", std::process::id())
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on machine {} for {}",
            self.pid, self.machine_id, self.state_path
        )?;
        if !self.run_id.is_empty() {
            write!(f, " (run {})", self.run_id)?;
        }
        Ok(())
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
    /// Unix time (ms) after which the lease is free, by the holder's clock (for people, and
    /// for hosts without `--standby`; a standby never trusts it).
    pub expires_unix_ms: u64,
    /// The holder's TTL in ms: how long a standby must see the lease unchanged before it may
    /// take it over. Leases written before it existed held 30 s.
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// Set by a clean release: the lease is free at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

fn default_ttl_ms() -> u64 {
    DEFAULT_TTL.as_millis() as u64
}

impl Body {
    /// A body for `holder` with `ttl`, expiring `ttl` from now (wall clock).
    pub fn new(holder: Holder, ttl: Duration) -> Body {
        Body {
            holder,
            expires_unix_ms: now_ms() + ttl.as_millis() as u64,
            ttl_ms: ttl.as_millis() as u64,
            released: false,
        }
    }

    /// `true` once the lease expired at `now_ms` by the wall clock (hosts without
    /// `--standby` only), or was released.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.released || now_ms >= self.expires_unix_ms
    }

    /// The holder's TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
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
    /// Another host wrote the lease since this run's last write: it is not ours any more.
    Lost {
        /// The lease's key.
        key: String,
        /// Who holds it now.
        holder: Holder,
    },
    /// The lease object is not a lease (not our JSON): refused, never overwritten.
    Foreign {
        /// The lease's key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// The lease names a TTL out of bounds: hostile or corrupt; refused, never followed.
    BadTtl {
        /// The lease's key.
        key: String,
        /// The TTL it names, in ms.
        ttl_ms: u64,
    },
    /// The store's error (unreachable, refused credentials, a lost answer, ...): the outcome
    /// is unknown; the lease this run last confirmed is still ours until it expires.
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
            LeaseError::Lost { key, holder } => {
                write!(f, "lost the lease {key}: {holder} wrote it")
            }
            LeaseError::Foreign { key, why } => {
                write!(f, "the lease object {key} is not a shmsnap lease ({why}); remove it if it is stale")
            }
            LeaseError::BadTtl { key, ttl_ms } => write!(
                f,
                "the lease object {key} names a TTL of {ttl_ms} ms, outside {} ms..={} ms: \
                 not a lease this host follows (remove it if it is stale)",
                MIN_TTL.as_millis(),
                MAX_TTL.as_millis()
            ),
            LeaseError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// The lease is ours, extended.
    Held,
    /// The lease object was gone (a wiped prefix, a deleted object) and was created again:
    /// ours, but the bucket may have lost every point — upload a new base.
    Recreated,
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    /// The body as this run last wrote it (or adopted it after a doubtful write).
    body: Body,
    /// The version of `body` in the store (for `If-Match`).
    version: UpdateVersion,
    /// This run's TTL.
    ttl: Duration,
    /// When the last write the store confirmed was sent: the lease is this run's until then
    /// plus the TTL. (A write adopted after a doubtful answer counts from the first attempt
    /// not yet confirmed: it may be that one which landed.)
    confirmed_sent: Instant,
    /// When the oldest write since the last confirmed one was sent (`None`: none pending).
    pending_since: Option<Instant>,
}

impl Lease {
    /// The holder's body as last written.
    #[cfg(test)]
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// Until when the lease is surely this run's: the monotonic instant the last confirmed
    /// write was sent plus the TTL. A standby that saw that write (after it was committed,
    /// so after it was sent) waits a whole TTL from then on its own monotonic clock.
    pub fn valid_until(&self) -> Instant {
        self.confirmed_sent + self.ttl
    }

    /// When the next renew is due (a third of the TTL after the last confirmed write).
    pub fn renew_due(&self) -> Instant {
        self.confirmed_sent + Timing { ttl: self.ttl }.renew_every()
    }

    /// Takes the lease of `replica` for `holder` with `ttl`: at once if there is none, it
    /// was released, or it names this machine's state path or this run (the state file's
    /// lock says no other run there is alive); with `trust_expiry` (a host without
    /// `--standby`) also once its wall-clock expiry passed.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Held`] if another holder's lease is unexpired, `Foreign`/`BadTtl` if the
    /// object is not a lease, `Store` for the store's errors (a race lost to another taker
    /// shows as `Held`).
    pub async fn take(
        replica: &Replica,
        holder: Holder,
        ttl: Duration,
        trust_expiry: bool,
    ) -> Result<Lease, LeaseError> {
        let key = lease_key(replica);
        let mode = match read(replica).await? {
            None => PutMode::Create,
            Some((current, version)) => {
                let free = current.released
                    || (trust_expiry && current.expired(now_ms()))
                    || holder.same_place(&current.holder)
                    || holder.same_run(&current.holder);
                if !free {
                    return Err(LeaseError::Held {
                        key: key.to_string(),
                        body: current,
                    });
                }
                update_mode(replica, version)
            }
        };
        Self::take_with(replica, holder, ttl, mode).await
    }

    /// Takes the lease with a conditional update on `seen` (a standby's takeover of a lease
    /// it saw unchanged for its TTL, or released).
    ///
    /// # Errors
    ///
    /// [`LeaseError::Held`] if another host wrote it since (it won), as [`take`](Self::take)
    /// otherwise.
    pub async fn take_over(
        replica: &Replica,
        holder: Holder,
        ttl: Duration,
        seen: UpdateVersion,
    ) -> Result<Lease, LeaseError> {
        let mode = update_mode(replica, seen);
        Self::take_with(replica, holder, ttl, mode).await
    }

    async fn take_with(
        replica: &Replica,
        holder: Holder,
        ttl: Duration,
        mode: PutMode,
    ) -> Result<Lease, LeaseError> {
        let body = Body::new(holder, ttl);
        let now = Instant::now();
        let mut lease = Lease {
            version: UpdateVersion {
                e_tag: None,
                version: None,
            },
            body: body.clone(),
            ttl,
            // Replaced by the write's own send time when it is confirmed.
            confirmed_sent: now,
            pending_since: None,
        };
        match lease.write(replica, body, mode).await {
            Ok(_) => Ok(lease),
            Err(LeaseError::Lost { key, holder }) => match read(replica).await? {
                Some((b, _)) => Err(LeaseError::Held { key, body: b }),
                None => Err(LeaseError::Lost { key, holder }),
            },
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (a stopping host): rewrites it as released, so that the next
    /// host, on any machine, may take it at once.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew).
    pub async fn release(mut self, replica: &Replica) -> Result<(), LeaseError> {
        let body = Body {
            expires_unix_ms: now_ms(),
            released: true,
            ..self.body.clone()
        };
        let mode = update_mode(replica, self.version.clone());
        self.write(replica, body, mode).await.map(|_| ())
    }

    /// Extends the lease by the TTL from now.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Lost`] if another host holds it now; `Store` if the outcome is unknown
    /// (retry: the lease is ours until [`valid_until`](Self::valid_until)).
    pub async fn renew(&mut self, replica: &Replica) -> Result<Renewed, LeaseError> {
        let body = Body::new(self.body.holder.clone(), self.ttl);
        if replica.local {
            // No conditional update: look before overwriting (the weaker guarantee above).
            match read(replica).await? {
                Some((current, _)) if !self.body.holder.same_run(&current.holder) => {
                    return Err(LeaseError::Lost {
                        key: lease_key(replica).to_string(),
                        holder: current.holder,
                    })
                }
                Some(_) => {}
                None => {
                    self.pending_since.get_or_insert_with(Instant::now);
                    return self.recreate(replica, body).await;
                }
            }
        }
        let mode = update_mode(replica, self.version.clone());
        self.write(replica, body, mode).await
    }

    /// Records a write the store confirmed (or that reading the lease showed landed): the
    /// lease holds from the oldest unconfirmed send on.
    fn confirmed(&mut self, body: Body, version: UpdateVersion) {
        self.body = body;
        self.version = version;
        if let Some(t) = self.pending_since.take() {
            self.confirmed_sent = t;
        }
    }

    /// Writes `body` with `mode`; any failure is resolved by reading the lease back.
    async fn write(
        &mut self,
        replica: &Replica,
        body: Body,
        mode: PutMode,
    ) -> Result<Renewed, LeaseError> {
        let key = lease_key(replica);
        self.pending_since.get_or_insert_with(Instant::now);
        let failure = match put(replica, &body, mode).await {
            Ok(version) => {
                self.confirmed(body, version);
                return Ok(Renewed::Held);
            }
            Err(e) => e,
        };
        // The answer is not a success: refused (someone else wrote, or our own earlier write
        // changed the e-tag), or unknown (timeout, reset, 5xx). The lease itself tells.
        match read(replica).await? {
            Some((current, version)) if self.body.holder.same_run(&current.holder) => {
                if matches!(failure, object_store::Error::Precondition { .. }) {
                    tracing::info!(
                        "replica {}: the lease {key} was refused a write but holds this run: \
                         an earlier answer was lost; going on with it",
                        replica.url
                    );
                }
                self.confirmed(current, version);
                Ok(Renewed::Held)
            }
            Some((current, _)) => Err(LeaseError::Lost {
                key: key.to_string(),
                holder: current.holder,
            }),
            None => self.recreate(replica, body).await,
        }
    }

    /// The lease object is gone: creates it again (create-only), then the caller uploads a
    /// new base.
    async fn recreate(&mut self, replica: &Replica, body: Body) -> Result<Renewed, LeaseError> {
        let key = lease_key(replica);
        tracing::warn!(
            "replica {}: the lease {key} is gone (the prefix was wiped or the object deleted); \
             creating it again, then uploading a new base",
            replica.url
        );
        match put(replica, &body, PutMode::Create).await {
            Ok(version) => {
                self.confirmed(body, version);
                Ok(Renewed::Recreated)
            }
            Err(_) => match read(replica).await? {
                Some((current, version)) if self.body.holder.same_run(&current.holder) => {
                    self.confirmed(current, version);
                    Ok(Renewed::Recreated)
                }
                Some((current, _)) => Err(LeaseError::Lost {
                    key: key.to_string(),
                    holder: current.holder,
                }),
                None => Err(LeaseError::Store(object_store::Error::Generic {
                    store: "lease",
                    source: "the lease could not be created again (no answer)".into(),
                })),
            },
        }
    }
}

/// A conditional update on `version`, or on a store without one (`file://`) an overwrite
/// guarded only by the read that [`Lease::write`] does after it (module docs).
fn update_mode(replica: &Replica, version: UpdateVersion) -> PutMode {
    if replica.local {
        PutMode::Overwrite
    } else {
        PutMode::Update(version)
    }
}

/// The lease's content and version, `None` if there is none; a TTL out of bounds is
/// [`LeaseError::BadTtl`].
pub async fn read(replica: &Replica) -> Result<Option<(Body, UpdateVersion)>, LeaseError> {
    let key = lease_key(replica);
    let got = match replica.lease_store.get(&key).await {
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
    if !ttl_in_bounds(body.ttl()) {
        return Err(LeaseError::BadTtl {
            key: key.to_string(),
            ttl_ms: body.ttl_ms,
        });
    }
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

async fn put(
    replica: &Replica,
    body: &Body,
    mode: PutMode,
) -> Result<UpdateVersion, object_store::Error> {
    let key = lease_key(replica);
    let json = serde_json::to_vec(body).expect("a lease body always serializes");
    let opts = PutOptions {
        mode,
        ..PutOptions::default()
    };
    let r = replica
        .lease_store
        .put_opts(&key, PutPayload::from(json), opts)
        .await?;
    Ok(UpdateVersion {
        e_tag: r.e_tag,
        version: r.version,
    })
}

#[cfg(test)]
mod tests;
