//! Packed snapshot: a snapshot file's data extents with a run table, so that a copy elsewhere
//! (a replica's base object) is as large as the data, not as the region. The local file is
//! sparse; an object in a bucket cannot be. Format: `docs/FORMAT.md`, "Replica layout".
//!
//! ```text
//! 0 .. T                run table: run_count runs of 16 bytes (offset u64, len u64, LE),
//!                       zero-padded to T = ceil(16 * run_count / 4096) * 4096
//! T .. T + data_len     the runs' image bytes, in table order
//! .. + 56               the snapshot file's footer, byte for byte (FOOTER.md)
//! .. + 64               trailer: "SHMSNAPP", version 1, run_count, data_len, image_len,
//!                       table_crc (u32), 0 (u32), 0 (u64), trailer_crc (u32, of bytes 0..56), 0
//! ```
//!
//! [`Plan::of`] finds the extents (`SEEK_DATA`/`SEEK_HOLE`, rounded out to 4096-byte granules)
//! and serves the packed bytes at any offset without building them in memory; [`unpack`]
//! checks everything it reads (the object is hostile input) and writes the snapshot file back,
//! holes where no run is. The rebuilt file is then verified as any snapshot file (its image
//! CRC covers every byte, holes as zeros).

use std::io;

use rustix::fd::AsFd;

use crate::copy::{file_len, for_each_extent, read_full_at, write_all_at};
use crate::snapshot::{decode_footer, FOOTER_LEN};

/// The trailer's magic.
pub const MAGIC: [u8; 8] = *b"SHMSNAPP";
/// The trailer's version.
pub const VERSION: u64 = 1;
/// The trailer's length.
pub const TRAILER_LEN: usize = 64;
/// Runs start on multiples of this, and are whole granules except at the image's end.
pub const GRANULE: u64 = 4096;
const RUN_LEN: u64 = 16;

/// How a snapshot file is packed: its runs, and the bytes around them.
#[derive(Debug, Clone)]
pub struct Plan {
    /// (image offset, length) of each run, ascending.
    runs: Vec<(u64, u64)>,
    /// Where each run's data starts in the object.
    starts: Vec<u64>,
    /// The run table, padded.
    table: Vec<u8>,
    /// The snapshot footer and the trailer.
    tail: Vec<u8>,
    data_len: u64,
}

impl Plan {
    /// Plans the packing of the snapshot file `fd`: reads its footer (which must decode) and
    /// finds its data extents.
    ///
    /// # Errors
    ///
    /// I/O errors; `InvalidData` if the file's footer does not decode.
    pub fn of(fd: impl AsFd) -> io::Result<Plan> {
        let fd = fd.as_fd();
        let len = file_len(fd)?;
        let mut footer = [0u8; FOOTER_LEN];
        if len < FOOTER_LEN as u64
            || read_full_at(fd, &mut footer, len - FOOTER_LEN as u64)? != FOOTER_LEN
        {
            return Err(invalid("shorter than a snapshot footer"));
        }
        let info = decode_footer(&footer).map_err(|e| invalid(&e.to_string()))?;
        let image_len = info.image_len;
        if image_len + FOOTER_LEN as u64 != len {
            return Err(invalid("the footer's image length does not match the file"));
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for_each_extent(fd, image_len, |off, n, data| {
            if data {
                let start = off / GRANULE * GRANULE;
                let end = (off + n)
                    .div_ceil(GRANULE)
                    .saturating_mul(GRANULE)
                    .min(image_len);
                match runs.last_mut() {
                    Some((s, l)) if *s + *l >= start => *l = end.max(*s + *l) - *s,
                    _ => runs.push((start, end - start)),
                }
            }
            Ok(())
        })?;
        let data_len: u64 = runs.iter().map(|r| r.1).sum();
        let mut table = Vec::with_capacity(table_len(runs.len() as u64) as usize);
        for &(o, l) in &runs {
            table.extend_from_slice(&o.to_le_bytes());
            table.extend_from_slice(&l.to_le_bytes());
        }
        table.resize(table_len(runs.len() as u64) as usize, 0);
        let mut starts = Vec::with_capacity(runs.len());
        let mut at = table.len() as u64;
        for &(_, l) in &runs {
            starts.push(at);
            at += l;
        }
        let mut tail = footer.to_vec();
        tail.extend_from_slice(&trailer(runs.len() as u64, data_len, image_len, &table));
        Ok(Plan {
            runs,
            starts,
            table,
            tail,
            data_len,
        })
    }

    /// The packed object's length.
    pub fn len(&self) -> u64 {
        self.table.len() as u64 + self.data_len + self.tail.len() as u64
    }

    /// `true` for an object of no bytes (never: there is always a footer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image bytes carried (the sum of the runs).
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Fills `buf` with the packed object's bytes from offset `at`, reading run data from the
    /// snapshot file `fd` the plan was made of.
    ///
    /// # Errors
    ///
    /// I/O errors; `UnexpectedEof` past the object's end or if the file shrank.
    pub fn read_at(&self, fd: impl AsFd, mut at: u64, mut buf: &mut [u8]) -> io::Result<()> {
        let fd = fd.as_fd();
        let t = self.table.len() as u64;
        let tail_at = t + self.data_len;
        while !buf.is_empty() {
            let n = if at < t {
                let n = buf.len().min((t - at) as usize);
                buf[..n].copy_from_slice(&self.table[at as usize..at as usize + n]);
                n
            } else if at < tail_at {
                let i = self.starts.partition_point(|&s| s <= at) - 1;
                let (off, len) = self.runs[i];
                let within = at - self.starts[i];
                let n = buf.len().min((len - within) as usize);
                if read_full_at(fd, &mut buf[..n], off + within)? != n {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                n
            } else {
                let k = (at - tail_at) as usize;
                if k >= self.tail.len() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let n = buf.len().min(self.tail.len() - k);
                buf[..n].copy_from_slice(&self.tail[k..k + n]);
                n
            };
            at += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

fn table_len(run_count: u64) -> u64 {
    (run_count * RUN_LEN).div_ceil(4096) * 4096
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

fn trailer(run_count: u64, data_len: u64, image_len: u64, table: &[u8]) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[0..8].copy_from_slice(&MAGIC);
    t[8..16].copy_from_slice(&VERSION.to_le_bytes());
    t[16..24].copy_from_slice(&run_count.to_le_bytes());
    t[24..32].copy_from_slice(&data_len.to_le_bytes());
    t[32..40].copy_from_slice(&image_len.to_le_bytes());
    t[40..44].copy_from_slice(&crc_fast::crc32_iscsi(table).to_le_bytes());
    let crc = crc_fast::crc32_iscsi(&t[0..56]);
    t[56..60].copy_from_slice(&crc.to_le_bytes());
    t
}

/// `true` if the file `fd` ends with a packed trailer's magic (else it is taken for a plain
/// snapshot file: replica objects written before packing existed).
///
/// # Errors
///
/// I/O errors.
pub fn is_packed(fd: impl AsFd) -> io::Result<bool> {
    let fd = fd.as_fd();
    let len = file_len(fd)?;
    if len < TRAILER_LEN as u64 {
        return Ok(false);
    }
    let mut m = [0u8; 8];
    Ok(read_full_at(fd, &mut m, len - TRAILER_LEN as u64)? == 8 && m == MAGIC)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Rebuilds the snapshot file a packed object `obj` was made of into `out` (truncated first):
/// the runs at their offsets, holes elsewhere, the footer at the end. Everything read from
/// `obj` is checked first: the trailer (magic, CRC, version), the lengths, the table (CRC,
/// runs in bounds, ascending, granule-aligned, summing to the data length), the footer.
///
/// # Errors
///
/// `InvalidData` naming what is wrong with the object; I/O errors.
pub fn unpack(obj: impl AsFd, out: impl AsFd) -> io::Result<()> {
    let (obj, out) = (obj.as_fd(), out.as_fd());
    let len = file_len(obj)?;
    let mut t = [0u8; TRAILER_LEN];
    if len < (TRAILER_LEN + FOOTER_LEN) as u64
        || read_full_at(obj, &mut t, len - TRAILER_LEN as u64)? != TRAILER_LEN
    {
        return Err(invalid("packed object: too short"));
    }
    if t[0..8] != MAGIC {
        return Err(invalid("packed object: bad magic"));
    }
    if crc_fast::crc32_iscsi(&t[0..56]).to_le_bytes() != t[56..60] {
        return Err(invalid("packed object: trailer checksum mismatch"));
    }
    if u64_at(&t, 8) != VERSION {
        return Err(invalid("packed object: unknown version"));
    }
    let (run_count, data_len, image_len) = (u64_at(&t, 16), u64_at(&t, 24), u64_at(&t, 32));
    if run_count > image_len.div_ceil(GRANULE) || data_len > image_len {
        return Err(invalid(
            "packed object: run count or data length out of range",
        ));
    }
    let tl = table_len(run_count);
    let want = tl
        .checked_add(data_len)
        .and_then(|x| x.checked_add((FOOTER_LEN + TRAILER_LEN) as u64));
    if want != Some(len) {
        return Err(invalid("packed object: length does not match its trailer"));
    }
    let mut table = vec![0u8; tl as usize];
    if read_full_at(obj, &mut table, 0)? != table.len() {
        return Err(invalid("packed object: short table"));
    }
    if crc_fast::crc32_iscsi(&table).to_le_bytes() != t[40..44] {
        return Err(invalid("packed object: run table checksum mismatch"));
    }
    let runs = check_runs(&table, run_count, data_len, image_len)?;
    let mut footer = [0u8; FOOTER_LEN];
    if read_full_at(obj, &mut footer, tl + data_len)? != FOOTER_LEN {
        return Err(invalid("packed object: short footer"));
    }
    let info = decode_footer(&footer).map_err(|e| invalid(&format!("packed object: {e}")))?;
    if info.image_len != image_len {
        return Err(invalid(
            "packed object: footer and trailer disagree on the image length",
        ));
    }
    rustix::fs::ftruncate(out, 0)?;
    rustix::fs::ftruncate(out, image_len + FOOTER_LEN as u64)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut src = tl;
    for (off, n) in runs {
        let mut done = 0;
        while done < n {
            let k = (n - done).min(buf.len() as u64) as usize;
            if read_full_at(obj, &mut buf[..k], src)? != k {
                return Err(invalid("packed object: short data"));
            }
            write_all_at(out, &buf[..k], off + done)?;
            done += k as u64;
            src += k as u64;
        }
    }
    write_all_at(out, &footer, image_len)
}

/// The runs of `table`, checked (module docs, [`unpack`]).
fn check_runs(
    table: &[u8],
    run_count: u64,
    data_len: u64,
    image_len: u64,
) -> io::Result<Vec<(u64, u64)>> {
    let mut runs = Vec::with_capacity(run_count as usize);
    let (mut end, mut sum) = (0u64, 0u64);
    for i in 0..run_count as usize {
        let (off, n) = (u64_at(table, i * 16), u64_at(table, i * 16 + 8));
        let stop = off.checked_add(n).filter(|&s| s <= image_len);
        let ok = n > 0
            && off % GRANULE == 0
            && off >= end
            && stop.is_some_and(|s| n % GRANULE == 0 || s == image_len);
        if !ok {
            return Err(invalid(&format!("packed object: run {i} is malformed")));
        }
        end = off + n;
        sum += n;
        runs.push((off, n));
    }
    if sum != data_len {
        return Err(invalid(
            "packed object: runs do not add up to the data length",
        ));
    }
    Ok(runs)
}

#[cfg(test)]
mod tests;
