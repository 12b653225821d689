//! A reference model of the queue strategy, for tests, proptest and fuzz targets.
//!
//! It states the queue's behaviour with plain collections — which entries are live after
//! every operation and their exact bytes — independently of the word-level implementation,
//! and checks a region against it.

use std::collections::VecDeque;

use shmsnap_core::{Region, WordMemory};

/// A committed entry of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// Its seq.
    pub seq: u64,
    /// Its stream offset.
    pub offset: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The model: live entries oldest first.
#[derive(Debug, Clone)]
pub struct QueueModel {
    entries: u64,
    data_size: u64,
    next_seq: u64,
    head: u64,
    live: VecDeque<ModelEntry>,
}

impl QueueModel {
    /// A model of a fresh region with `entries` descriptors and `data_size` ring bytes.
    pub fn new(entries: u64, data_size: u64) -> Self {
        QueueModel {
            entries,
            data_size,
            next_seq: 1,
            head: 0,
            live: VecDeque::new(),
        }
    }

    /// Live entries, oldest first.
    pub fn live(&self) -> &VecDeque<ModelEntry> {
        &self.live
    }

    /// The seq the next commit gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Commits `payload` (1..=S bytes) and returns its seq.
    pub fn commit(&mut self, payload: &[u8]) -> u64 {
        let s = self.data_size;
        let n = payload.len() as u64;
        assert!(n >= 1 && n <= s, "model: payload size out of range");
        // Placement: 8-aligned; never straddling the end of the ring.
        let mut at = self.head.div_ceil(8) * 8;
        if at % s + n > s {
            at = at.div_ceil(s) * s;
        }
        let end = at + n;
        let seq = self.next_seq;
        // Live entries are a suffix of the commits: at most E - 1 others remain, all of
        // whose bytes lie within one ring of the new payload's end.
        while let Some(front) = self.live.front() {
            let too_many = seq - front.seq >= self.entries;
            let overlaps = front.offset + s < end;
            if !(too_many || overlaps) {
                break;
            }
            self.live.pop_front();
        }
        self.live.push_back(ModelEntry {
            seq,
            offset: at,
            payload: payload.to_vec(),
        });
        self.next_seq += 1;
        self.head = end;
        seq
    }

    /// Evicts every entry older than `seq` except the newest.
    pub fn evict_before(&mut self, seq: u64) {
        while self.live.len() > 1 && self.live.front().is_some_and(|f| f.seq < seq) {
            self.live.pop_front();
        }
    }

    /// Checks that `region` holds exactly the model's live entries with their exact bytes.
    ///
    /// # Errors
    ///
    /// A description of the first difference.
    pub fn check<M: WordMemory + ?Sized>(&self, region: &Region<'_, M>) -> Result<(), String> {
        check_entries(region, self.live.iter())
    }
}

/// Checks that the valid entries of `region` are exactly `expected` (by seq, offset and bytes).
///
/// # Errors
///
/// A description of the first difference.
pub fn check_entries<'a, M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
    expected: impl Iterator<Item = &'a ModelEntry>,
) -> Result<(), String> {
    let mut found: Vec<_> = region.entries().collect();
    found.sort_by_key(|d| d.seq);
    let expected: Vec<_> = expected.collect();
    let seqs: Vec<u64> = found.iter().map(|d| d.seq).collect();
    let want: Vec<u64> = expected.iter().map(|e| e.seq).collect();
    if seqs != want {
        return Err(format!("live seqs {seqs:?}, model says {want:?}"));
    }
    for (d, e) in found.iter().zip(expected) {
        if d.offset != e.offset || d.length != e.payload.len() as u64 {
            return Err(format!(
                "entry {} is {d:?}, model says offset {} length {}",
                d.seq,
                e.offset,
                e.payload.len()
            ));
        }
        let mut buf = vec![0u8; e.payload.len()];
        region
            .read_payload(d, &mut buf)
            .map_err(|err| format!("entry {}: {err}", d.seq))?;
        if buf != e.payload {
            return Err(format!("entry {} payload differs from the model", d.seq));
        }
    }
    Ok(())
}
