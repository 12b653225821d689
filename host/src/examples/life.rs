//! `shmsnap example life`: Conway's Game of Life whose whole board is the client's state, handed
//! over through a triple buffer (`--strategy triple`).
//!
//! Each generation is published as one buffer: a 40-byte header (`LIFEBRD1`, side, seed,
//! generation, checksum) and the board, one byte per cell (0 dead, 1 alive), on a torus. On
//! start the client reads the newest state (restored by the host, or left by a killed client)
//! and treats it as hostile: the header must be well formed, the checksum must match, and the
//! board must be exactly generation `g` of the deterministic run from the seed (recomputed
//! from scratch). A torn, stale-mixed or corrupt board cannot pass; the client then prints
//! `life: CORRUPT state: ...` and exits with status [`CORRUPT`].

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::format::word;
use shmsnap_core::triple::{TripleClient, TripleError, TripleRequest};
use shmsnap_core::{LayoutError, PAGE_SIZE};
use shmsnap_linux::ClientRegion;

use crate::exit::{Code, Failure};

/// Exit status when the restored state is wrong.
pub const CORRUPT: u8 = 3;
/// Buffers the client asks for.
pub const BUFFERS: u64 = 3;
/// Header bytes before the board.
pub const HEADER: usize = 40;
/// `LIFEBRD1`, little-endian.
const MAGIC: u64 = u64::from_le_bytes(*b"LIFEBRD1");
/// Largest generation a restored board may claim: verifying it recomputes every generation,
/// so a corrupt but checksummed count must not make the client compute for ever.
pub const MAX_GENERATION: u64 = 1 << 32;

/// Parses `--side`: a multiple of 8 from 8 to 4096.
pub fn parse_side(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (8..=4096).contains(&n) && n.is_multiple_of(8) => Ok(n),
        _ => Err("expected a multiple of 8 from 8 to 4096".into()),
    }
}

/// The triple-buffer request for a board of `side` x `side` cells: header and board, rounded
/// up to whole pages.
pub fn request(side: u32) -> TripleRequest {
    let bytes = (HEADER + (side as usize).pow(2)) as u64;
    TripleRequest {
        buffers: BUFFERS,
        buffer_size: bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE,
    }
}

/// A board and where it is in its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    /// Cells per side.
    pub side: u32,
    /// Seed of generation 0.
    pub seed: u64,
    /// Generation number.
    pub generation: u64,
    /// `side * side` cells, row-major, 0 or 1.
    pub cells: Vec<u8>,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Board {
    /// Generation 0 of `seed`: about a third of the cells alive.
    pub fn new(side: u32, seed: u64) -> Board {
        let mut x = seed;
        let cells = (0..(side as usize).pow(2))
            .map(|_| u8::from(splitmix(&mut x).is_multiple_of(3)))
            .collect();
        Board {
            side,
            seed,
            generation: 0,
            cells,
        }
    }

    /// Steps one generation (B3/S23 on a torus).
    pub fn step(&mut self, next: &mut Vec<u8>) {
        let n = self.side as usize;
        next.resize(n * n, 0);
        for y in 0..n {
            let (up, down) = ((y + n - 1) % n * n, (y + 1) % n * n);
            let row = y * n;
            for x in 0..n {
                let (l, r) = ((x + n - 1) % n, (x + 1) % n);
                let c = &self.cells;
                let alive = c[up + l]
                    + c[up + x]
                    + c[up + r]
                    + c[row + l]
                    + c[row + r]
                    + c[down + l]
                    + c[down + x]
                    + c[down + r];
                next[row + x] = u8::from(alive == 3 || (alive == 2 && c[row + x] == 1));
            }
        }
        std::mem::swap(&mut self.cells, next);
        self.generation += 1;
    }

    /// The checksum of the header fields and the board (a 64-bit multiply-rotate hash).
    pub fn checksum(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut mix = |w: u64| h = (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
        for w in [MAGIC, u64::from(self.side), self.seed, self.generation] {
            mix(w);
        }
        for c in self.cells.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            mix(u64::from_le_bytes(b));
        }
        h
    }

    /// The buffer bytes: header, then the board.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        for w in [
            MAGIC,
            u64::from(self.side),
            self.seed,
            self.generation,
            self.checksum(),
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.cells);
    }

    /// Parses and fully checks a restored buffer for a board of `side`: header, checksum, cell
    /// values, and that the board is generation `g` of its seed's run (recomputed).
    ///
    /// # Errors
    ///
    /// What is wrong with the state, for the `CORRUPT` line.
    pub fn decode_verified(bytes: &[u8], side: u32) -> Result<Board, String> {
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or("the buffer is shorter than the header")
        };
        if word(0)? != MAGIC {
            return Err(format!("bad magic {:#018x}", word(0)?));
        }
        if word(1)? != u64::from(side) {
            return Err(format!(
                "the board is {} cells wide, this client uses --side {side}",
                word(1)?
            ));
        }
        let (seed, generation, sum) = (word(2)?, word(3)?, word(4)?);
        if generation > MAX_GENERATION {
            return Err(format!(
                "generation {generation} is beyond {MAX_GENERATION}"
            ));
        }
        let n = (side as usize).pow(2);
        let cells = bytes
            .get(HEADER..HEADER + n)
            .ok_or("the buffer is shorter than the board")?;
        if let Some(i) = cells.iter().position(|&c| c > 1) {
            return Err(format!("cell {i} holds {}, not 0 or 1", cells[i]));
        }
        let board = Board {
            side,
            seed,
            generation,
            cells: cells.to_vec(),
        };
        if board.checksum() != sum {
            return Err(format!(
                "checksum {sum:#018x} does not match the board ({:#018x}) at generation {generation}",
                board.checksum()
            ));
        }
        let mut expected = Board::new(side, seed);
        let mut scratch = Vec::new();
        while expected.generation < generation {
            expected.step(&mut scratch);
        }
        if expected.cells != board.cells {
            let i = expected
                .cells
                .iter()
                .zip(&board.cells)
                .position(|(a, b)| a != b);
            return Err(format!(
                "the board is not generation {generation} of seed {seed} (first difference at cell {})",
                i.unwrap_or(0)
            ));
        }
        Ok(board)
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::Software, format!("life: {what}: {e}"))
}

/// The failure for a region the client cannot use; too small is a configuration problem.
fn open_failure(e: TripleError) -> Failure {
    match e {
        TripleError::Layout(LayoutError::TooSmall { .. }) => Failure::new(
            Code::Config,
            format!("life: cannot use the region: {e}; pass a larger --size to `shmsnap run`"),
        ),
        e => fail(
            "cannot use the region (start it with `shmsnap run --strategy triple`)",
            e,
        ),
    }
}

/// How the `--reinit-at` test hook re-initialises the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reinit {
    /// `TripleClient::reinit`: the documented way back from a damaged region.
    Reinit,
    /// Zero header word 0 (the magic), then `TripleClient::init` (issue 20's scenario).
    ZeroMagic,
}

/// Re-initialises the region `how` (the client that held it is gone) and returns the new
/// client: its seqs start again at 1, under a new client epoch the host recognises.
fn reinit(
    region: &mut ClientRegion,
    how: Reinit,
    side: u32,
) -> Result<TripleClient<'_, [AtomicU64]>, Failure> {
    let client = match how {
        Reinit::Reinit => region.triple_reinit(request(side)),
        Reinit::ZeroMagic => {
            // Relaxed: no writer of this region exists between the drop and the init.
            region.words()[word::MAGIC].store(0, Ordering::Relaxed);
            region.triple(request(side))
        }
    };
    let client = client.map_err(open_failure)?;
    println!(
        "life: pid {} re-initialised the region ({how:?}); seqs start again at {}",
        std::process::id(),
        client.next_seq()
    );
    Ok(client)
}

/// Runs the client; `reinit_at` is the `--reinit-at` test hook (generation, how).
///
/// # Errors
///
/// A [`Failure`] if the region cannot be found or used.
pub fn run(
    generations: u64,
    pause: Duration,
    side: u32,
    seed: u64,
    reinit_at: Option<(u64, Reinit)>,
) -> Result<ExitCode, Failure> {
    let mut region = super::region()?;
    let mut client = region.triple(request(side)).map_err(open_failure)?;
    let mut bytes = vec![0u8; HEADER + (side as usize).pow(2)];
    let mut board = match client.read_newest(0, &mut bytes) {
        Err(e) => return Err(fail("cannot read the newest state", e)),
        Ok(None) => {
            println!(
                "life: pid {} starts a fresh board (side {side}, seed {seed})",
                std::process::id()
            );
            Board::new(side, seed)
        }
        Ok(Some(seq)) => match Board::decode_verified(&bytes, side) {
            Ok(b) => {
                println!(
                    "life: pid {} restored generation {} (seq {seq}), board verified",
                    std::process::id(),
                    b.generation
                );
                b
            }
            Err(why) => {
                println!("life: CORRUPT state (seq {seq}): {why}");
                return Ok(ExitCode::from(CORRUPT));
            }
        },
    };
    let _ = std::io::stdout().flush();
    let mut next = Vec::new();
    loop {
        if generations > 0 && board.generation >= generations {
            println!(
                "life: reached generation {} (seq {}), done",
                board.generation,
                client.next_seq() - 1
            );
            return Ok(ExitCode::SUCCESS);
        }
        board.step(&mut next);
        board.encode(&mut bytes);
        client.publish(&bytes).map_err(|e| fail("publish", e))?;
        if let Some((_, how)) = reinit_at.filter(|&(g, _)| g == board.generation) {
            drop(client);
            client = reinit(&mut region, how, side)?;
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blinker_oscillates_and_the_run_is_deterministic() {
        let mut b = Board {
            side: 8,
            seed: 0,
            generation: 0,
            cells: vec![0; 64],
        };
        for x in 2..5 {
            b.cells[3 * 8 + x] = 1;
        }
        let start = b.cells.clone();
        let mut s = Vec::new();
        b.step(&mut s);
        assert_ne!(b.cells, start);
        assert_eq!(b.cells.iter().filter(|&&c| c == 1).count(), 3);
        b.step(&mut s);
        assert_eq!(b.cells, start);
        assert_eq!(Board::new(16, 7), Board::new(16, 7));
    }

    #[test]
    fn only_the_exact_board_of_its_generation_verifies() {
        let mut b = Board::new(16, 5);
        let mut s = Vec::new();
        for _ in 0..10 {
            b.step(&mut s);
        }
        let mut bytes = Vec::new();
        b.encode(&mut bytes);
        assert_eq!(Board::decode_verified(&bytes, 16), Ok(b.clone()));
        assert!(Board::decode_verified(&bytes, 24).is_err(), "other side");
        assert!(Board::decode_verified(&bytes[..100], 16).is_err(), "short");
        // A torn board: a cell flipped, checksum kept.
        let mut torn = bytes.clone();
        torn[HEADER + 3] ^= 1;
        assert!(Board::decode_verified(&torn, 16)
            .unwrap_err()
            .contains("checksum"));
        // A board of another generation, re-checksummed: only the recompute catches it.
        let mut other = b.clone();
        other.generation += 1;
        other.encode(&mut bytes);
        let e = Board::decode_verified(&bytes, 16).unwrap_err();
        assert!(e.contains("not generation 11"), "{e}");
        // Garbage everywhere: a clean error, never a panic.
        let mut x = 1u64;
        for len in [0, 7, 40, 41, 296] {
            let junk: Vec<u8> = (0..len).map(|_| splitmix(&mut x) as u8).collect();
            assert!(Board::decode_verified(&junk, 16).is_err());
        }
        let mut huge = bytes.clone();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Board::decode_verified(&huge, 16)
            .unwrap_err()
            .contains("beyond"));
    }
}
