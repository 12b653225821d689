//! Object names in the bucket, and the listing of what is there.
//!
//! ```text
//! PREFIX/lease                                   the writer's lease (JSON)
//! PREFIX/g/<base generation, 20 digits>/base     a base: the local snapshot file's bytes
//! PREFIX/g/<base generation>/d/<index, 8 digits> delta INDEX of that base: the delta file's bytes
//! ```
//!
//! Zero-padded numbers sort as text in numeric order, so a listing is in chain order; one
//! listing of `PREFIX/g/` tells every generation and point. An object exists only once its
//! single PUT or its multipart upload completed: a listed object is complete (it may still be
//! corrupt; its own footer CRC decides, after download).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::ObjectMeta;

use super::store::Replica;

/// A point of a chain, as the bucket names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PointId {
    /// The generation of the chain's base.
    pub generation: u64,
    /// 0 for the base, else the delta's index (1 = right after the base).
    pub index: u32,
}

impl std::fmt::Display for PointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            0 => write!(f, "base {}", self.generation),
            i => write!(f, "delta {i} of base {}", self.generation),
        }
    }
}

/// The key of a point: `g/<gen>/base` or `g/<gen>/d/<index>`, under the replica's prefix.
pub fn point_key(replica: &Replica, p: PointId) -> Key {
    match p.index {
        0 => replica.key(&format!("g/{:020}/base", p.generation)),
        i => replica.key(&format!("g/{:020}/d/{i:08}", p.generation)),
    }
}

/// The lease's key.
pub fn lease_key(replica: &Replica) -> Key {
    replica.key("lease")
}

/// The point a key names, `None` for anything else (the lease, a stray object). `rest` is the
/// key with the replica's prefix removed.
pub fn parse_point(rest: &str) -> Option<PointId> {
    let rest = rest.strip_prefix("g/")?;
    let (generation, tail) = rest.split_once('/')?;
    let generation = digits(generation, 20)?;
    let index = if tail == "base" {
        0
    } else {
        let i = digits(tail.strip_prefix("d/")?, 8)?;
        u32::try_from(i).ok().filter(|&i| i > 0)?
    };
    Some(PointId { generation, index })
}

fn digits(s: &str, width: usize) -> Option<u64> {
    if s.len() != width || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One object of the listing.
#[derive(Debug, Clone)]
pub struct Object {
    /// Its key.
    pub key: Key,
    /// Its size in bytes.
    pub size: u64,
    /// When the store last wrote it.
    pub modified: DateTime<Utc>,
}

impl From<ObjectMeta> for Object {
    fn from(m: ObjectMeta) -> Self {
        Object {
            key: m.location,
            size: m.size,
            modified: m.last_modified,
        }
    }
}

/// A generation in the bucket: its base (if present) and its deltas by index.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    /// The base object; `None` if only deltas are left (useless: never restored).
    pub base: Option<Object>,
    /// Deltas by index.
    pub deltas: BTreeMap<u32, Object>,
}

impl Generation {
    /// The deltas 1, 2, … present without a gap: the part of the chain that can be restored
    /// if every object is sound.
    pub fn contiguous(&self) -> u32 {
        let mut n = 0;
        while self.deltas.contains_key(&(n + 1)) {
            n += 1;
        }
        n
    }

    /// Every object of the generation, newest delta first and the base last: the order in
    /// which retention deletes, so that what is left at any moment is still a chain prefix.
    pub fn deletion_order(&self) -> Vec<Key> {
        let mut keys: Vec<Key> = self.deltas.values().rev().map(|o| o.key.clone()).collect();
        keys.extend(self.base.iter().map(|o| o.key.clone()));
        keys
    }
}

/// Everything under `PREFIX/g/`, by generation (oldest first).
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Generations by number.
    pub generations: BTreeMap<u64, Generation>,
    /// Keys under `PREFIX/g/` that name no point (reported by `inspect`, otherwise ignored).
    pub strays: Vec<Key>,
}

impl Listing {
    /// Lists the replica (all pages: an error on any page fails the whole listing, so a
    /// caller never acts on a partial one).
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn load(replica: &Replica) -> object_store::Result<Listing> {
        let root = replica.key("g");
        let metas: Vec<ObjectMeta> = replica.store.list(Some(&root)).try_collect().await?;
        Ok(Listing::from_objects(replica, metas))
    }

    /// Sorts `metas` into generations.
    pub fn from_objects(replica: &Replica, metas: Vec<ObjectMeta>) -> Listing {
        let mut listing = Listing::default();
        for m in metas {
            let rest = strip(replica, &m.location);
            match rest.as_deref().and_then(parse_point) {
                Some(p) => {
                    let g = listing.generations.entry(p.generation).or_default();
                    match p.index {
                        0 => g.base = Some(m.into()),
                        i => {
                            g.deltas.insert(i, m.into());
                        }
                    }
                }
                None => listing.strays.push(m.location),
            }
        }
        listing
    }

    /// The newest generation number present (with or without a base), 0 if none.
    pub fn newest_generation(&self) -> u64 {
        self.generations.keys().next_back().copied().unwrap_or(0)
    }

    /// The newest restorable point (newest generation with a base, its contiguous deltas).
    pub fn newest_point(&self) -> Option<PointId> {
        self.generations.iter().rev().find_map(|(&generation, g)| {
            g.base.as_ref().map(|_| PointId {
                generation,
                index: g.contiguous(),
            })
        })
    }
}

/// `key` without the replica's prefix, `None` if it is not under it.
pub fn strip(replica: &Replica, key: &Key) -> Option<String> {
    let full = key.as_ref();
    let prefix = replica.prefix.as_ref();
    if prefix.is_empty() {
        return Some(full.to_owned());
    }
    full.strip_prefix(prefix)?
        .strip_prefix('/')
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> Replica {
        Replica::open("s3://bucket/pre/fix").unwrap()
    }

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            location: Key::parse(key).unwrap(),
            last_modified: Utc::now(),
            size: 1,
            e_tag: None,
            version: None,
        }
    }

    #[test]
    fn keys_round_trip_and_sort_in_chain_order() {
        let r = replica();
        let points = [
            PointId {
                generation: 9,
                index: 0,
            },
            PointId {
                generation: 9,
                index: 1,
            },
            PointId {
                generation: 9,
                index: 10,
            },
            PointId {
                generation: 10,
                index: 0,
            },
            PointId {
                generation: u64::MAX,
                // The chain's largest position (8 digits), as local delta names.
                index: shmsnap_linux::chain::MAX_INDEX as u32,
            },
        ];
        let keys: Vec<String> = points
            .iter()
            .map(|&p| point_key(&r, p).to_string())
            .collect();
        assert_eq!(keys[0], "pre/fix/g/00000000000000000009/base");
        assert_eq!(keys[2], "pre/fix/g/00000000000000000009/d/00000010");
        for (p, k) in points.iter().zip(&keys) {
            let rest = strip(&r, &Key::parse(k).unwrap()).unwrap();
            assert_eq!(parse_point(&rest), Some(*p), "{k}");
        }
        let mut sorted = keys.clone();
        sorted.sort();
        // "base" sorts before "d/": a generation's base is listed before its deltas.
        assert_eq!(sorted, keys, "names sort in chain order");
    }

    #[test]
    fn hostile_names_are_not_points() {
        for bad in [
            "g/1/base",
            "g/00000000000000000001/d/1",
            "g/00000000000000000001/d/00000000",
            "g/00000000000000000001/d/0000000x",
            "g/00000000000000000001/based",
            "g/99999999999999999999/base",
            "lease",
            "g/00000000000000000001/d/00000001/x",
        ] {
            assert_eq!(parse_point(bad), None, "{bad}");
        }
    }

    #[test]
    fn newest_point_is_the_newest_base_with_its_gapless_deltas() {
        let r = replica();
        let l = Listing::from_objects(
            &r,
            vec![
                meta("pre/fix/g/00000000000000000003/base"),
                meta("pre/fix/g/00000000000000000003/d/00000001"),
                meta("pre/fix/g/00000000000000000003/d/00000002"),
                meta("pre/fix/g/00000000000000000003/d/00000004"),
                // A generation whose base is gone is not restorable.
                meta("pre/fix/g/00000000000000000005/d/00000001"),
                meta("pre/fix/g/junk"),
            ],
        );
        assert_eq!(l.newest_generation(), 5);
        assert_eq!(
            l.newest_point(),
            Some(PointId {
                generation: 3,
                index: 2
            })
        );
        assert_eq!(l.strays.len(), 1);
        let order = l.generations[&3].deletion_order();
        assert!(order[0].as_ref().ends_with("d/00000004"));
        assert!(order.last().unwrap().as_ref().ends_with("base"));
    }
}
