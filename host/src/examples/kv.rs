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
//!
//! Restored bytes are hostile input, like everything read from the region: the op count may be
//! any `u64` (the expected map is computed from the last 500 operations only, never by
//! iterating `0..ops`), unit numbers are checked by the unit table, node lengths are clamped
//! and every key must sit in its own bucket. A wrong state is reported (exit 3), never a
//! panic or an allocation sized by the region.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use shmsnap_core::{LayoutRequest, Region, UnitError, UnitTable, WordMemory};

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

/// `(op * 7919) % KEYS`, without overflow for any `op`.
fn key_of(op: u64) -> u64 {
    (op % KEYS) * 7919 % KEYS
}

fn bucket_of(key: u64) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize
}

/// The map after `ops` operations, computed from scratch in at most `KEYS` steps for any
/// `ops`: 7919 is coprime to 500, so `key_of` is a bijection on every `KEYS` consecutive
/// operations, and the last `KEYS` of them set every key ever set to its final value.
fn expected(ops: u64) -> BTreeMap<u64, u64> {
    (ops.saturating_sub(KEYS)..ops)
        .map(|i| (key_of(i), i))
        .collect()
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

/// The client's state, rebuilt from the newest entry of the region.
#[derive(Debug, Default)]
struct State {
    ops: u64,
    roots: [u64; BUCKETS],
    buckets: Vec<BTreeMap<u64, u64>>,
}

/// Rebuilds the state from the newest entry (empty without one), marking the units it uses.
/// `Ok(Err(why))` when the restored state is well-formed but not what `ops` operations
/// produce.
fn restore<M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
    table: &mut UnitTable<'_>,
) -> Result<Result<State, String>, Failure> {
    let mut st = State {
        ops: 0,
        roots: [NO_UNIT; BUCKETS],
        buckets: vec![BTreeMap::new(); BUCKETS],
    };
    let Some(d) = region.newest() else {
        return Ok(Ok(st));
    };
    let mut b = [0u8; ROOT_LEN];
    let n = region
        .read_payload(&d, &mut b)
        .map_err(|e| fail("cannot read the root", e))?;
    if n != ROOT_LEN {
        return Err(fail("root", format!("has {n} bytes, expected {ROOT_LEN}")));
    }
    st.ops = word(&b, 0);
    let mut node = vec![0u8; UNIT];
    for (i, r) in st.roots.iter_mut().enumerate() {
        *r = word(&b, 1 + i);
        if *r == NO_UNIT {
            continue;
        }
        let unit = usize::try_from(*r).map_err(|e| fail("root", e))?;
        table.mark_in_use(unit).map_err(|e| fail("root", e))?;
        region
            .read_tail((unit * UNIT) as u64, &mut node)
            .map_err(|e| fail("cannot read a node", e))?;
        let len = word(&node, 0).min(CAPACITY as u64) as usize;
        st.buckets[i] = (0..len)
            .map(|j| (word(&node, 1 + 2 * j), word(&node, 2 + 2 * j)))
            .collect();
        if let Some(k) = st.buckets[i].keys().find(|&&k| bucket_of(k) != i) {
            return Ok(Err(format!("key {k} is stored in bucket {i}")));
        }
    }
    let restored: BTreeMap<u64, u64> = st.buckets.iter().flatten().map(|(&k, &v)| (k, v)).collect();
    if restored != expected(st.ops) {
        return Ok(Err(format!(
            "the map after {} operations is not what they produce",
            st.ops
        )));
    }
    Ok(Ok(st))
}

/// Runs the client.
///
/// # Errors
///
/// A [`Failure`] if the region cannot be found or used.
pub fn run(ops_target: u64, pause: Duration) -> Result<ExitCode, Failure> {
    let mut region = super::region()?;
    let mut w = region
        .writer(LAYOUT)
        .map_err(|e| super::attach_failure("kv", e))?;
    let mut states = vec![0u64; w.unit_count(UNIT)];
    let mut table = UnitTable::new(&mut states, UNIT).map_err(|e| fail("units", e))?;
    let State {
        mut ops,
        mut roots,
        mut buckets,
    } = match restore(w.region(), &mut table)? {
        Ok(st) => st,
        Err(why) => {
            println!("kv: CORRUPT state: {why}");
            return Ok(ExitCode::from(CORRUPT));
        }
    };
    let restored = buckets.iter().map(BTreeMap::len).sum::<usize>();
    println!(
        "kv: pid {} restored {ops} operations, {restored} keys, all correct",
        std::process::id(),
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
            let next = ops
                .checked_add(1)
                .ok_or_else(|| fail("ops", "the operation count would overflow"))?;
            root.extend_from_slice(&next.to_le_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;
    use shmsnap_core::Writer;
    use shmsnap_linux::{Mapping, Memfd, Protection};

    /// A region holding one committed root that claims `ops` operations and no nodes.
    fn region_claiming(ops: u64) -> (Memfd, Mapping) {
        let memfd = Memfd::create("kv-hostile", 1 << 20).unwrap();
        memfd.seal_against_shrink().unwrap();
        let map = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
        let mut w = Writer::open_or_init(map.words(), LAYOUT, super::super::TEST_CLIENT).unwrap();
        let mut root = ops.to_le_bytes().to_vec();
        for _ in 0..BUCKETS {
            root.extend_from_slice(&NO_UNIT.to_le_bytes());
        }
        w.commit(&root).unwrap();
        drop(w);
        (memfd, map)
    }

    fn restore_of(ops: u64) -> Result<Result<State, String>, Failure> {
        let (_m, map) = region_claiming(ops);
        let region = Region::open(map.words()).unwrap();
        let mut states = vec![0u64; 1024];
        let mut table = UnitTable::new(&mut states, UNIT).unwrap();
        restore(&region, &mut table)
    }

    #[test]
    fn a_hostile_op_count_is_reported_as_corrupt_not_a_panic() {
        // 2^63 used to overflow a capacity, 2^40 to ask for 16 TiB, u64::MAX to overflow ops+1.
        for ops in [1u64 << 63, 1 << 40, u64::MAX, 501] {
            match restore_of(ops) {
                Ok(Err(why)) => assert!(why.contains(&ops.to_string()), "{why}"),
                other => panic!("ops {ops}: {other:?}"),
            }
        }
        assert!(
            restore_of(0).unwrap().is_ok(),
            "an empty map after 0 ops is sound"
        );
    }

    #[test]
    fn the_expected_map_equals_replaying_every_operation() {
        for ops in [0u64, 1, 499, 500, 501, 1234] {
            let replayed: BTreeMap<u64, u64> = (0..ops).map(|i| (key_of(i), i)).collect();
            assert_eq!(expected(ops), replayed, "ops {ops}");
        }
    }
}
