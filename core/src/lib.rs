//! shmsnap core protocol (work in progress).
#![no_std]
#![warn(missing_docs)]

mod memory;
pub use memory::{atomic_words, WordMemory, WordsError};
