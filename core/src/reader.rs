//! Reading a region: valid entries, the newest entry, payloads. Used by clients after a
//! restart, by the host and by inspection tools. Everything read is treated as hostile.

use core::fmt;
use core::sync::atomic::Ordering;

use crate::descriptor::{read_descriptor, Descriptor};
use crate::layout::{Hints, Layout, LayoutError};
use crate::memory::{load_bytes, WordMemory};
use crate::status::{self, Status};

/// Why a payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// The descriptor is not valid for this region.
    InvalidDescriptor,
    /// The output buffer is shorter than the payload.
    BufferTooSmall {
        /// Payload length.
        needed: u64,
        /// Buffer length.
        got: usize,
    },
    /// The entry was evicted while it was being read (only with a concurrent writer).
    Evicted {
        /// The entry's seq.
        seq: u64,
    },
    /// The byte range is outside the tail.
    OutOfTail {
        /// Offset within the tail.
        offset: u64,
        /// Length asked for.
        len: usize,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ReadError::InvalidDescriptor => {
                write!(f, "descriptor does not describe an entry of this region")
            }
            ReadError::BufferTooSmall { needed, got } => write!(
                f,
                "payload is {needed} bytes but the buffer holds only {got}"
            ),
            ReadError::Evicted { seq } => write!(f, "entry {seq} was evicted while it was read"),
            ReadError::OutOfTail { offset, len } => write!(
                f,
                "tail read of {len} bytes at offset {offset} is outside the tail"
            ),
        }
    }
}

/// A region with a validated layout.
#[derive(Debug)]
pub struct Region<'m, M: WordMemory + ?Sized> {
    mem: &'m M,
    /// Validated against `mem.len()`: every index derived from it is in bounds.
    layout: Layout,
}

impl<M: WordMemory + ?Sized> Clone for Region<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M: WordMemory + ?Sized> Copy for Region<'_, M> {}

impl<'m, M: WordMemory + ?Sized> Region<'m, M> {
    /// Reads and validates the header of `mem`.
    ///
    /// # Errors
    ///
    /// A [`LayoutError`] naming what is wrong with the header.
    pub fn open(mem: &'m M) -> Result<Self, LayoutError> {
        let layout = Layout::read(mem)?;
        Ok(Region { mem, layout })
    }

    /// A region whose layout was validated against `mem` by the caller.
    pub(crate) fn with_layout(mem: &'m M, layout: Layout) -> Self {
        Region { mem, layout }
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The memory.
    pub fn mem(&self) -> &'m M {
        self.mem
    }

    /// The header hints.
    pub fn hints(&self) -> Hints {
        Hints::read(self.mem)
    }

    /// What the host status area says is durable ([`status::persisted`]): a wait-free read.
    pub fn persisted(&self) -> Status {
        status::persisted(self.mem)
    }

    /// Asks the host for a prompt snapshot ([`status::request_snapshot`]): wait-free. The
    /// host only notices at once if it is also woken (`shmsnap-linux`'s `status` does both).
    pub fn request_snapshot(&self) -> u64 {
        status::request_snapshot(self.mem)
    }

    /// Reads descriptor `slot` (seqlock); `None` if empty, invalid or changing.
    pub fn read_descriptor(&self, slot: u64) -> Option<Descriptor> {
        read_descriptor(self.mem, &self.layout, slot)
    }

    /// Every valid entry, in slot order. Bounded by `E`.
    pub fn entries(&self) -> impl Iterator<Item = Descriptor> + '_ {
        (0..self.layout.entries).filter_map(move |slot| self.read_descriptor(slot))
    }

    /// The valid entry with the highest seq.
    pub fn newest(&self) -> Option<Descriptor> {
        self.entries().max_by_key(|d| d.seq)
    }

    /// Copies the payload of `d` into `out` and returns its length.
    ///
    /// The descriptor is re-read after the copy (a seqlock over the payload): if the entry was
    /// evicted meanwhile the copy may be torn and [`ReadError::Evicted`] is returned.
    ///
    /// # Errors
    ///
    /// [`ReadError::InvalidDescriptor`], [`ReadError::BufferTooSmall`], [`ReadError::Evicted`].
    pub fn read_payload(&self, d: &Descriptor, out: &mut [u8]) -> Result<usize, ReadError> {
        let slot = self.layout.slot_of(d.seq);
        if !d.is_valid_for(&self.layout, slot) {
            return Err(ReadError::InvalidDescriptor);
        }
        let len = d.length as usize;
        let got = out.len();
        let out = out.get_mut(..len).ok_or(ReadError::BufferTooSmall {
            needed: d.length,
            got,
        })?;
        if self.read_descriptor(slot) != Some(*d) {
            return Err(ReadError::Evicted { seq: d.seq });
        }
        load_bytes(self.mem, self.layout.ring_byte(d.offset), out);
        // Acquire fence: if the loads above saw bytes stored after an eviction of `d`, the
        // writer's Release fence synchronizes with it and the re-read below sees the eviction.
        self.mem.fence(Ordering::Acquire);
        if self.read_descriptor(slot) != Some(*d) {
            return Err(ReadError::Evicted { seq: d.seq });
        }
        Ok(len)
    }

    /// Copies `out.len()` bytes from the tail at `offset` (the client reading its own units).
    ///
    /// # Errors
    ///
    /// [`ReadError::OutOfTail`] if the range is not inside the tail.
    pub fn read_tail(&self, offset: u64, out: &mut [u8]) -> Result<(), ReadError> {
        let len = out.len();
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|e| e <= self.layout.tail_len);
        if !fits {
            return Err(ReadError::OutOfTail { offset, len });
        }
        load_bytes(self.mem, (self.layout.tail_offset + offset) as usize, out);
        Ok(())
    }
}
