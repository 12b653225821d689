//! The fuzz-input cursor: every byte string is a valid input; reads past the end yield zeros,
//! so short inputs mean "the simple case".

use shmsnap_core::{MAX_SEQ, MAX_STREAM};

/// A cursor over fuzz bytes; reads past the end yield zeros.
#[derive(Debug)]
pub(crate) struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    /// A `u64` biased toward interesting values: zero, small numbers, and values just below
    /// the protocol's limits and `u64::MAX`.
    pub(crate) fn wide(&mut self) -> u64 {
        match self.u8() % 8 {
            0 => 0,
            1 => u64::from(self.u8()),
            2 => u64::from(self.u16()),
            3 => MAX_SEQ.wrapping_sub(u64::from(self.u8() % 16)),
            4 => MAX_STREAM.wrapping_sub(u64::from(self.u16())),
            5 => u64::MAX.wrapping_sub(u64::from(self.u8())),
            _ => self.u64(),
        }
    }

    /// The remaining bytes, consuming them.
    pub(crate) fn take_rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }
}
