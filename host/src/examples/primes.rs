//! `shmsnap example primes`: the seed's demo, made sound.
//!
//! Primes are appended in batches; each batch goes into a fresh tail unit (append-only data:
//! units are never retired, so a unit is written once and frozen forever). The payload is the
//! root: `(count, batch)`. On start the client rebuilds its unit table from the root and
//! verifies every restored prime against a sieve — a torn or stale state cannot go unnoticed.
//!
//! With `--ack N` it is an acknowledging client (DESIGN §14): every N commits it asks the host
//! for a prompt snapshot, waits until the status area covers that commit, and only then prints
//! `primes: acknowledged COUNT` — a promise that COUNT primes survive any crash. The commit
//! itself never waits; the wait is this client's choice.
//!
//! With `--ack-replicated N` the acknowledgement waits instead until the commit is in the
//! host's replica (`REPLICA_SEQ`, `run --replica URL`): `primes: acknowledged COUNT (seq S; in
//! the replica up to seq R, ...)` promises that COUNT primes survive losing the machine. The
//! status area cannot say whether the host has a replica at all: a host without one never
//! publishes a replica seq, so the client then never acknowledges, and says why on stderr at
//! every retry ([`ACK_RETRY`]) — `nothing is in the replica yet` while its commit is durable
//! locally — instead of hanging silently.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use shmsnap_core::{LayoutRequest, UnitError, UnitTable, Writer};
use shmsnap_linux::Durability;

use crate::exit::{Code, Failure};

/// The layout the primes client asks for.
pub const LAYOUT: LayoutRequest = LayoutRequest {
    entries: 64,
    data_size: 4096,
};

/// Exit status when the restored state is wrong.
pub const CORRUPT: u8 = 3;

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::Software, format!("primes: {what}: {e}"))
}

/// The first `n` primes, by a sieve (independent of anything restored).
pub fn first_primes(n: usize) -> Vec<u64> {
    if n == 0 {
        return Vec::new();
    }
    let nf = n as f64;
    let bound = if n < 6 {
        15
    } else {
        (nf * (nf.ln() + nf.ln().ln())) as usize + 3
    };
    let mut composite = vec![false; bound + 1];
    let mut out = Vec::with_capacity(n);
    for i in 2..=bound {
        if !composite[i] {
            out.push(i as u64);
            if out.len() == n {
                break;
            }
            let mut j = i * i;
            while j <= bound {
                composite[j] = true;
                j += i;
            }
        }
    }
    out
}

fn is_prime(c: u64, primes: &[u64]) -> bool {
    primes
        .iter()
        .take_while(|&&p| p * p <= c)
        .all(|&p| !c.is_multiple_of(p))
}

/// When and what the client acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Never.
    Never,
    /// Every N commits, once a durable local snapshot holds the commit (`--ack N`).
    Local(u64),
    /// Every N commits, once the host's replica holds the commit (`--ack-replicated N`).
    Replicated(u64),
}

impl Ack {
    /// From `--ack` and `--ack-replicated` (clap refuses both at once; 0 means off).
    pub fn from_args(ack: u64, ack_replicated: u64) -> Ack {
        match (ack, ack_replicated) {
            (0, 0) => Ack::Never,
            (_, 0) => Ack::Local(ack),
            _ => Ack::Replicated(ack_replicated),
        }
    }

    /// `true` if the commit that filled `used` units is one to acknowledge.
    fn due(self, used: u64) -> bool {
        match self {
            Ack::Never => false,
            Ack::Local(n) | Ack::Replicated(n) => used.is_multiple_of(n),
        }
    }
}

/// Runs the client.
///
/// # Errors
///
/// A [`Failure`] if the region cannot be found or used.
pub fn run(
    limit: u64,
    pause: Duration,
    batch_arg: u64,
    linger: Duration,
    ack: Ack,
) -> Result<ExitCode, Failure> {
    let mut region = super::region()?;
    let durable = region.durability();
    let mut w = region
        .writer(LAYOUT)
        .map_err(|e| super::attach_failure("primes", e))?;
    let (mut count, batch, seq) = read_root(&w, batch_arg)?;
    let unit = (batch * 8) as usize;
    let mut states = vec![0u64; w.unit_count(unit)];
    let mut table = UnitTable::new(&mut states, unit).map_err(|e| fail("units", e))?;
    let mut used = (count / batch) as usize;
    let mut primes = restore_units(&w, &mut table, used)?;
    let expected = first_primes(count as usize);
    if let Some(i) = (0..primes.len()).find(|&i| primes[i] != expected[i]) {
        println!(
            "primes: CORRUPT state: prime #{} is {}, expected {} ({count} restored)",
            i + 1,
            primes[i],
            expected[i]
        );
        return Ok(ExitCode::from(CORRUPT));
    }
    println!(
        "primes: pid {} restored {count} primes, all correct (newest seq {seq})",
        std::process::id()
    );
    let _ = std::io::stdout().flush();
    let mut candidate = primes.last().map_or(2, |p| p + 1);
    loop {
        if limit > 0 && count >= limit {
            println!("primes: reached {count} primes, done");
            if !linger.is_zero() {
                let _ = std::io::stdout().flush();
                std::thread::sleep(linger);
            }
            return Ok(ExitCode::SUCCESS);
        }
        let next = next_batch(&mut candidate, &primes, batch);
        let Some(seq) = commit_batch(&mut w, &mut table, used, count + batch, batch, &next)? else {
            println!("primes: the tail is full at {count} primes, done");
            return Ok(ExitCode::SUCCESS);
        };
        count += batch;
        used += 1;
        if ack.due(used as u64) {
            acknowledge(&durable, ack, seq, count)?;
        }
        primes.extend_from_slice(&next);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// The restored root `(count, batch)` and the newest seq, checked for consistency (restored
/// bytes are hostile input); a fresh region starts at `(0, batch_arg)`.
fn read_root<M: shmsnap_core::WordMemory + ?Sized>(
    w: &Writer<'_, M>,
    batch_arg: u64,
) -> Result<(u64, u64, u64), Failure> {
    let (count, batch, seq) = match w.region().newest() {
        Some(d) => {
            let mut b = [0u8; 16];
            let n = w
                .region()
                .read_payload(&d, &mut b)
                .map_err(|e| fail("cannot read the root", e))?;
            if n != 16 {
                return Err(fail("root", format!("has {n} bytes, expected 16")));
            }
            let word =
                |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            (word(0), word(1), d.seq)
        }
        None => (0, batch_arg.max(1), 0),
    };
    if batch == 0 || batch > 1 << 16 || count % batch != 0 {
        return Err(fail(
            "root",
            format!("count {count} and batch {batch} are inconsistent"),
        ));
    }
    Ok((count, batch, seq))
}

/// Marks the first `used` units in use and reads the primes they hold.
fn restore_units<M: shmsnap_core::WordMemory + ?Sized>(
    w: &Writer<'_, M>,
    table: &mut UnitTable<'_>,
    used: usize,
) -> Result<Vec<u64>, Failure> {
    if used > table.len() {
        return Err(fail(
            "root",
            format!("refers to {used} units but the tail holds {}", table.len()),
        ));
    }
    let unit = table.unit_size();
    let mut primes = Vec::with_capacity(used * unit / 8);
    let mut buf = vec![0u8; unit];
    for u in 0..used {
        table.mark_in_use(u).map_err(|e| fail("units", e))?;
        w.region()
            .read_tail((u * unit) as u64, &mut buf)
            .map_err(|e| fail("cannot read a unit", e))?;
        primes.extend(
            buf.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())),
        );
    }
    Ok(primes)
}

/// The next `batch` primes from `candidate` on (which it advances).
fn next_batch(candidate: &mut u64, primes: &[u64], batch: u64) -> Vec<u64> {
    let mut next = Vec::with_capacity(batch as usize);
    while next.len() < batch as usize {
        let c = *candidate;
        if is_prime(c, primes)
            && next
                .iter()
                .all(|&p: &u64| !c.is_multiple_of(p) || p * p > c)
        {
            next.push(c);
        }
        *candidate += 1;
    }
    next
}

/// Commits `next` in unit `used` with the root `(count, batch)`; `None` if the tail is full.
fn commit_batch<M: shmsnap_core::WordMemory + ?Sized>(
    w: &mut Writer<'_, M>,
    table: &mut UnitTable<'_>,
    used: usize,
    count: u64,
    batch: u64,
    next: &[u64],
) -> Result<Option<u64>, Failure> {
    let bytes: Vec<u8> = next.iter().flat_map(|p| p.to_le_bytes()).collect();
    let mut tx = w.begin(16).map_err(|e| fail("commit", e))?;
    let g = match tx.alloc_unit(table) {
        Ok(g) => g,
        Err(UnitError::Exhausted) => return Ok(None),
        Err(e) => return Err(fail("units", e)),
    };
    if g.unit() != used {
        return Err(fail(
            "units",
            format!("got unit {}, expected {used}", g.unit()),
        ));
    }
    tx.write_unit(table, &g, 0, &bytes)
        .map_err(|e| fail("unit write", e))?;
    let mut root = [0u8; 16];
    root[..8].copy_from_slice(&count.to_le_bytes());
    root[8..].copy_from_slice(&batch.to_le_bytes());
    tx.commit(&root).map(Some).map_err(|e| fail("commit", e))
}

/// How long one wait for durability lasts before the request is repeated (a starved or
/// failed snapshot publishes nothing; the next request or interval snapshot will).
const ACK_RETRY: Duration = Duration::from_secs(2);

/// Asks for a snapshot and waits until the status covers commit `seq` (`Ack::Local`) or the
/// replica holds it (`Ack::Replicated`), then prints that `count` primes are acknowledged.
/// While a replicated acknowledgement waits, every [`ACK_RETRY`] says on stderr what it waits
/// for (see [`replica_wait`]).
fn acknowledge(durable: &Durability, ack: Ack, seq: u64, count: u64) -> Result<(), Failure> {
    let replicated = matches!(ack, Ack::Replicated(_));
    loop {
        // The replica uploads persisted points only: ask for one until the commit has one
        // (after that, another snapshot would only add uploads).
        if !durable.persisted().covers(seq) {
            durable
                .request_snapshot()
                .map_err(|e| fail("snapshot request", e))?;
        }
        let done = if replicated {
            durable.wait_replicated(seq, ACK_RETRY)
        } else {
            durable.wait_persisted(seq, ACK_RETRY)
        }
        .map_err(|e| fail("durability wait", e))?;
        let s = durable.persisted();
        if !done {
            if replicated {
                eprintln!("{}", replica_wait(s, seq));
            }
            continue;
        }
        if replicated {
            println!(
                "primes: acknowledged {count} (seq {seq}; in the replica up to seq {}, durable \
                 locally up to seq {}, generation {})",
                s.replica_seq, s.seq, s.generation
            );
        } else {
            println!(
                "primes: acknowledged {count} (seq {seq}; durable up to seq {}, generation {})",
                s.seq, s.generation
            );
        }
        let _ = std::io::stdout().flush();
        return Ok(());
    }
}

/// What a replicated acknowledgement of commit `seq` still waits for, given status `s`. A
/// replica seq of 0 with the commit durable locally is what a host without `--replica` shows
/// for ever — and a host whose first upload is slow or failing, for a while: the status area
/// cannot tell the two apart, so the message names both.
fn replica_wait(s: shmsnap_core::Status, seq: u64) -> String {
    if s.replica_seq == 0 && s.covers(seq) {
        format!(
            "primes: waiting to acknowledge seq {seq}: durable locally (up to seq {}), but \
             nothing is in the replica yet (replica seq 0) - is the host running with \
             --replica URL? (or its first upload has not finished; see the host's log)",
            s.seq
        )
    } else if s.covers(seq) {
        format!(
            "primes: waiting to acknowledge seq {seq}: durable locally, the replica holds up \
             to seq {} so far (upload under way or failing; see the host's log)",
            s.replica_seq
        )
    } else {
        format!(
            "primes: waiting to acknowledge seq {seq}: no durable snapshot holds it yet \
             (local up to seq {}, replica up to seq {})",
            s.seq, s.replica_seq
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sieve_gives_the_first_primes() {
        assert_eq!(first_primes(10), [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert_eq!(first_primes(10_000).last(), Some(&104_729));
        assert!(first_primes(0).is_empty());
    }

    #[test]
    fn ack_options_map_to_one_mode() {
        assert_eq!(Ack::from_args(0, 0), Ack::Never);
        assert_eq!(Ack::from_args(3, 0), Ack::Local(3));
        assert_eq!(Ack::from_args(0, 2), Ack::Replicated(2));
        assert!(Ack::Replicated(2).due(4) && !Ack::Replicated(2).due(3));
        assert!(!Ack::Never.due(1));
    }

    #[test]
    fn a_replica_wait_names_a_missing_replica_only_when_the_commit_is_durable_locally() {
        use shmsnap_core::Status;
        let local = Status {
            seq: 7,
            generation: 2,
            replica_seq: 0,
        };
        assert!(replica_wait(local, 5).contains("is the host running with --replica URL?"));
        let behind = Status {
            replica_seq: 3,
            ..local
        };
        assert!(replica_wait(behind, 5).contains("the replica holds up to seq 3"));
        assert!(replica_wait(local, 9).contains("no durable snapshot holds it yet"));
    }
}
