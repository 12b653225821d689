//! Frozen units: epoch-based reclamation of the client's tail space, keyed on sequence numbers.
//!
//! The tail is cut into units of a fixed size. A unit written during the commit of seq `s` is
//! *frozen*: a live entry may refer to it, and the host may be copying it. The client
//! *retires* a unit as of seq `t` when no entry `>= t` refers to it; the unit becomes writable
//! again only once the oldest live entry is `>= t`, i.e. every entry that could refer to it has
//! been evicted (and that eviction is ordered before the reuse by the writer's Release fence).
//!
//! The table lives in the client's private memory (caller-provided storage; core does not
//! allocate). After a restore it must be rebuilt from the payload of the newest entry with
//! [`UnitTable::mark_in_use`]: tail bytes outside units reachable from that payload may be
//! half-written leftovers of commits the host dropped.
//!
//! Writing is only possible through a [`UnitGrant`], which only
//! [`Transaction::alloc_unit`](crate::Transaction::alloc_unit) creates and whose lifetime ends
//! before the writer can start another transaction: a frozen unit cannot be written through
//! the safe API.

use core::fmt;
use core::marker::PhantomData;

/// State word of a free unit.
const FREE: u64 = 0;
/// State word of a unit in use (frozen: written, possibly referenced).
const IN_USE: u64 = u64::MAX;

/// The state of one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    /// Never written, or reclaimed: may be allocated.
    Free,
    /// Written by some commit and possibly referenced: frozen.
    InUse,
    /// No entry with seq `>= as_of` refers to it; reusable once the oldest live seq is `>= as_of`.
    Retired {
        /// The retire point.
        as_of: u64,
    },
}

/// Misuse of the unit API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnitError {
    /// No unit is free or reclaimable; evicting older entries may free some.
    Exhausted,
    /// The unit index is outside the table.
    OutOfRange {
        /// The index given.
        unit: usize,
    },
    /// Only a unit in use can be retired.
    NotInUse {
        /// The unit.
        unit: usize,
    },
    /// The retire point must be a sequence number (`>= 1`).
    BadRetirePoint,
    /// The write does not fit in the unit.
    WriteOutOfBounds {
        /// Offset within the unit.
        offset: usize,
        /// Bytes to write.
        len: usize,
        /// The unit size.
        unit_size: usize,
    },
    /// The grant belongs to another transaction.
    ForeignGrant,
    /// The unit size must be a non-zero multiple of 8.
    BadUnitSize {
        /// The size given.
        unit_size: usize,
    },
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UnitError::Exhausted => write!(
                f,
                "no tail unit is free or reclaimable yet; retire units and evict older entries (Writer::evict_before) or enlarge the tail"
            ),
            UnitError::OutOfRange { unit } => write!(f, "tail unit {unit} does not exist"),
            UnitError::NotInUse { unit } => {
                write!(f, "tail unit {unit} is not in use, so it cannot be retired")
            }
            UnitError::BadRetirePoint => write!(f, "a unit's retire point must be a sequence number >= 1"),
            UnitError::WriteOutOfBounds {
                offset,
                len,
                unit_size,
            } => write!(
                f,
                "write of {len} bytes at offset {offset} does not fit in a {unit_size}-byte unit"
            ),
            UnitError::ForeignGrant => write!(f, "the unit grant belongs to another transaction"),
            UnitError::BadUnitSize { unit_size } => write!(
                f,
                "unit size {unit_size} must be a non-zero multiple of 8 bytes"
            ),
        }
    }
}

/// The client's table of tail units (private memory, one `u64` of state per unit).
#[derive(Debug)]
pub struct UnitTable<'a> {
    /// Unit size in bytes: a non-zero multiple of 8.
    unit_size: usize,
    /// Per unit: `FREE`, `IN_USE`, or a retire point `1..u64::MAX`.
    states: &'a mut [u64],
    /// Where the next allocation search starts (an optimisation; any value is correct).
    cursor: usize,
}

impl<'a> UnitTable<'a> {
    /// A table of `states.len()` units of `unit_size` bytes, all free.
    ///
    /// Only as many units as fit in the tail are ever handed out; see
    /// [`Writer::unit_count`](crate::Writer::unit_count).
    ///
    /// # Errors
    ///
    /// [`UnitError::BadUnitSize`] unless `unit_size` is a non-zero multiple of 8.
    pub fn new(states: &'a mut [u64], unit_size: usize) -> Result<Self, UnitError> {
        if unit_size == 0 || !unit_size.is_multiple_of(8) {
            return Err(UnitError::BadUnitSize { unit_size });
        }
        states.fill(FREE);
        Ok(UnitTable {
            unit_size,
            states,
            cursor: 0,
        })
    }

    /// Unit size in bytes.
    pub fn unit_size(&self) -> usize {
        self.unit_size
    }

    /// Number of units in the table.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// `true` if the table has no units.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The state of `unit`, or `None` if it is out of range.
    pub fn state(&self, unit: usize) -> Option<UnitState> {
        self.states.get(unit).map(|&s| match s {
            FREE => UnitState::Free,
            IN_USE => UnitState::InUse,
            as_of => UnitState::Retired { as_of },
        })
    }

    /// Marks `unit` in use, when rebuilding the table after a restore from the units the
    /// newest entry's payload refers to.
    ///
    /// # Errors
    ///
    /// [`UnitError::OutOfRange`].
    pub fn mark_in_use(&mut self, unit: usize) -> Result<(), UnitError> {
        let s = self
            .states
            .get_mut(unit)
            .ok_or(UnitError::OutOfRange { unit })?;
        *s = IN_USE;
        Ok(())
    }

    /// Retires `unit` as of sequence number `as_of`: no entry with seq `>= as_of` refers to it.
    ///
    /// Typically `as_of` is the seq of the commit whose payload stopped referring to the unit
    /// ([`Transaction::seq`](crate::Transaction::seq) tells it before the commit).
    ///
    /// # Errors
    ///
    /// [`UnitError::OutOfRange`], [`UnitError::NotInUse`], [`UnitError::BadRetirePoint`].
    pub fn retire(&mut self, unit: usize, as_of: u64) -> Result<(), UnitError> {
        if as_of == FREE || as_of == IN_USE {
            return Err(UnitError::BadRetirePoint);
        }
        let s = self
            .states
            .get_mut(unit)
            .ok_or(UnitError::OutOfRange { unit })?;
        if *s != IN_USE {
            return Err(UnitError::NotInUse { unit });
        }
        *s = as_of;
        Ok(())
    }

    /// Finds a unit below `limit` that is free, or retired as of a point `<= oldest_live`,
    /// marks it in use and returns it. Bounded by the table length.
    pub(crate) fn take(&mut self, limit: usize, oldest_live: u64) -> Option<usize> {
        let n = core::cmp::min(limit, self.states.len());
        if n == 0 {
            return None;
        }
        let start = self.cursor % n;
        for k in 0..n {
            let u = (start + k) % n;
            let s = self.states.get_mut(u)?;
            let reusable = *s == FREE || (*s != IN_USE && *s <= oldest_live);
            if reusable {
                *s = IN_USE;
                self.cursor = u + 1;
                return Some(u);
            }
        }
        None
    }
}

/// Permission to write one tail unit during one transaction.
///
/// Created only by [`Transaction::alloc_unit`](crate::Transaction::alloc_unit). The lifetime
/// `'w` is that of the transaction's borrow of the writer, so a grant cannot outlive its
/// transaction into the next one; the grant also records its transaction's seq, which
/// [`Transaction::write_unit`](crate::Transaction::write_unit) checks.
///
/// # Examples
///
/// ```
/// use core::sync::atomic::AtomicU64;
/// use shmsnap_core::{LayoutRequest, UnitTable, Writer};
///
/// let mem: Vec<AtomicU64> = (0..2048).map(|_| AtomicU64::new(0)).collect();
/// let id = shmsnap_core::ClaimId::new(1).unwrap();
/// let mut w = Writer::init(&mem[..], LayoutRequest { entries: 4, data_size: 64 }, id).unwrap();
/// let mut states = [0u64; 4];
/// let mut table = UnitTable::new(&mut states, 64).unwrap();
/// let mut tx = w.begin(8).unwrap();
/// let g = tx.alloc_unit(&mut table).unwrap();
/// tx.write_unit(&table, &g, 0, b"frozen once committed").unwrap();
/// tx.commit(&(g.unit() as u64).to_le_bytes()).unwrap();
/// ```
///
/// Once its transaction is over, a grant cannot be used again: the writer stays borrowed
/// while the grant lives, so no new transaction can start.
///
/// ```compile_fail
/// use core::sync::atomic::AtomicU64;
/// use shmsnap_core::{LayoutRequest, UnitTable, Writer};
///
/// let mem: Vec<AtomicU64> = (0..2048).map(|_| AtomicU64::new(0)).collect();
/// let id = shmsnap_core::ClaimId::new(1).unwrap();
/// let mut w = Writer::init(&mem[..], LayoutRequest { entries: 4, data_size: 64 }, id).unwrap();
/// let mut states = [0u64; 4];
/// let mut table = UnitTable::new(&mut states, 64).unwrap();
/// let mut tx = w.begin(8).unwrap();
/// let g = tx.alloc_unit(&mut table).unwrap();
/// tx.commit(b"8 bytes!").unwrap();
/// let mut tx2 = w.begin(8).unwrap(); // error: `w` is still borrowed by `g`
/// tx2.write_unit(&table, &g, 0, b"writes a frozen unit").unwrap();
/// ```
#[derive(Debug)]
#[must_use = "a unit grant is the only way to write the unit it names"]
pub struct UnitGrant<'w> {
    pub(crate) unit: usize,
    pub(crate) seq: u64,
    pub(crate) _tx: PhantomData<&'w ()>,
}

impl UnitGrant<'_> {
    /// The unit index: store it in the payload (or in other units) to refer to the unit.
    pub fn unit(&self) -> usize {
        self.unit
    }
}
