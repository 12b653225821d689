//! `shmsnap example kv`: a persistent key-value map with copy-on-write nodes.
//!
//! The map has 16 buckets; each bucket is a node in its own tail unit (a count, then sorted
//! `(key, value)` pairs). An update copies the bucket into a freshly allocated unit with the
//! change applied, commits a new root (the op count and the 16 bucket units) and retires the
//! old unit as of that commit. Retired units are reused once every entry that could refer to
//! them has been evicted — the frozen-unit rule, so the host's snapshot never sees a node
//! change under a kept root.
//!
//! Operation `i` sets key `(i * 7919) % 500` to `i`, so the whole map is a function of the op
//! count, and the client checks every restored key and value on start.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use shmsnap_core::{LayoutRequest, UnitError, UnitTable, Writer};

use crate::exit::{Code, Failure};

/// The layout the kv client asks for.
pub const LAYOUT: LayoutRequest = LayoutRequest {
    entries: 64,
    data_size: 8192,
};
const BUCKETS: usize = 16;
const KEYS: u64 = 500;
/// Pairs per bucket node (500 keys / 16 buckets leaves ample room).
const CAPACITY: usize = 96;
const UNIT: usize = 8 + CAPACITY * 16;
const NO_UNIT: u64 = u64::MAX;
const ROOT_LEN: usize = 8 * (1 + BUCKETS);
/// Exit status when the restored state is wrong.
pub const CORRUPT: u8 = 3;

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::Software, format!("kv: {what}: {e}"))
}

fn key_of(op: u64) -> u64 {
    (op * 7919) % KEYS
}

fn bucket_of(key: u64) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize
}

/// The map after `ops` operations, computed from scratch.
fn expected(ops: u64) -> BTreeMap<u64, u64> {
    (0..ops).map(|i| (key_of(i), i)).collect()
}

fn encode_node(pairs: &BTreeMap<u64, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + pairs.len() * 16);
    out.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&k.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn word(b: &[u8], i: usize) -> u64 {
    b.get(i * 8..i * 8 + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Runs the client.
///
/// # Errors
///
/// A [`Failure`] if the region cannot be found or used.
pub fn run(ops_target: u64, pause: Duration) -> Result<ExitCode, Failure> {
    let (_memfd, map) = super::region()?;
    let mut w =
        Writer::open_or_init(map.words(), LAYOUT).map_err(|e| super::attach_failure("kv", e))?;
    let mut states = vec![0u64; w.unit_count(UNIT)];
    let mut table = UnitTable::new(&mut states, UNIT).map_err(|e| fail("units", e))?;
    let mut ops = 0;
    let mut roots = [NO_UNIT; BUCKETS];
    let mut buckets: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); BUCKETS];
    if let Some(d) = w.region().newest() {
        let mut b = [0u8; ROOT_LEN];
        let n = w
            .region()
            .read_payload(&d, &mut b)
            .map_err(|e| fail("cannot read the root", e))?;
        if n != ROOT_LEN {
            return Err(fail("root", format!("has {n} bytes, expected {ROOT_LEN}")));
        }
        ops = word(&b, 0);
        let mut node = vec![0u8; UNIT];
        for (i, r) in roots.iter_mut().enumerate() {
            *r = word(&b, 1 + i);
            if *r == NO_UNIT {
                continue;
            }
            table
                .mark_in_use(*r as usize)
                .map_err(|e| fail("root", e))?;
            w.region()
                .read_tail(*r * UNIT as u64, &mut node)
                .map_err(|e| fail("cannot read a node", e))?;
            let len = word(&node, 0).min(CAPACITY as u64) as usize;
            buckets[i] = (0..len)
                .map(|j| (word(&node, 1 + 2 * j), word(&node, 2 + 2 * j)))
                .collect();
        }
    }
    let restored: BTreeMap<u64, u64> = buckets.iter().flatten().map(|(&k, &v)| (k, v)).collect();
    if restored != expected(ops) {
        println!("kv: CORRUPT state: the map after {ops} operations is not what they produce");
        return Ok(ExitCode::from(CORRUPT));
    }
    println!(
        "kv: pid {} restored {ops} operations, {} keys, all correct",
        std::process::id(),
        restored.len()
    );
    while ops < ops_target {
        let key = key_of(ops);
        let b = bucket_of(key);
        let mut node = buckets[b].clone();
        node.insert(key, ops);
        let bytes = encode_node(&node);
        let mut evicted = false;
        loop {
            let mut tx = w.begin(ROOT_LEN).map_err(|e| fail("commit", e))?;
            let g = match tx.alloc_unit(&mut table) {
                Ok(g) => g,
                Err(UnitError::Exhausted) if !evicted => {
                    // Free retired units sooner: evict everything but the newest entry.
                    drop(tx);
                    let next = w.next_seq();
                    w.evict_before(next);
                    evicted = true;
                    continue;
                }
                Err(e) => return Err(fail("units (is the tail too small?)", e)),
            };
            tx.write_unit(&table, &g, 0, &bytes)
                .map_err(|e| fail("node write", e))?;
            if roots[b] != NO_UNIT {
                // No entry from this commit on refers to the old node.
                table
                    .retire(roots[b] as usize, tx.seq())
                    .map_err(|e| fail("retire", e))?;
            }
            roots[b] = g.unit() as u64;
            let mut root = Vec::with_capacity(ROOT_LEN);
            root.extend_from_slice(&(ops + 1).to_le_bytes());
            for r in roots {
                root.extend_from_slice(&r.to_le_bytes());
            }
            tx.commit(&root).map_err(|e| fail("commit", e))?;
            break;
        }
        ops += 1;
        buckets[b] = node;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    println!("kv: reached {ops} operations, done");
    Ok(ExitCode::SUCCESS)
}
