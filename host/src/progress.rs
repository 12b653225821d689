//! Progress of long byte work (verify, restore, downloads): a bar with bytes, rate and ETA on
//! stderr when stderr is a terminal, nothing at all otherwise (pipes, files, the journal).
//!
//! ```ignore
//! let p = Progress::bytes(file_len, "verifying state.snap");
//! let mut reader = p.wrap_read(file);       // or p.inc(n) after each chunk
//! /* ... read it all ... */
//! p.finish();
//! ```
//!
//! Work done inside os-linux (`verify_entries`, `restore_into`: they take an fd, not a reader,
//! and have no progress hook) is metered from outside with [`reading_file`]: the bytes the
//! working thread has read, per the kernel (`rchar` in `/proc/thread-self/io`, which counts
//! `pread`, `sendfile` and `copy_file_range` alike), sampled by a second thread. A byte
//! callback in os-linux's CRC and sparse copy would make this exact; until then the bar is as
//! exact as the kernel's count, and ends at 100 % when the work does.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::mpsc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const TEMPLATE: &str =
    "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}";

/// A progress bar over a known number of bytes; a no-op when hidden.
#[derive(Debug)]
pub struct Progress {
    /// `None` when stderr is not a terminal: every method returns at once.
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for `total` bytes labelled `label`, drawn on stderr only if it is a terminal.
    pub fn bytes(total: u64, label: &str) -> Progress {
        if io::stderr().is_terminal() {
            Progress::drawn_on(total, label, ProgressDrawTarget::stderr())
        } else {
            Progress::hidden()
        }
    }

    /// A progress that shows nothing.
    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    /// A bar drawn on `target`.
    fn drawn_on(total: u64, label: &str, target: ProgressDrawTarget) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), target);
        // TEMPLATE is a constant, checked by the tests: the fallback is never used.
        let style = ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(label.to_owned());
        Progress { bar: Some(bar) }
    }

    /// Whether anything is drawn.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "for readers in the host (replica downloads); tested here"
        )
    )]
    pub fn is_visible(&self) -> bool {
        self.bar.is_some()
    }

    /// `n` more bytes done.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// `done` bytes done in all (capped at the total: an estimate may overshoot).
    pub fn set(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done.min(b.length().unwrap_or(u64::MAX)));
        }
    }

    /// Runs `f` with the bar cleared (for a log line in the middle of the work), then redraws it.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "for readers in the host (replica downloads); tested here"
        )
    )]
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    /// Counts the bytes read through `inner`.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "for readers in the host (replica downloads); tested here"
        )
    )]
    pub fn wrap_read<R: Read>(&self, inner: R) -> ProgressRead<'_, R> {
        ProgressRead {
            inner,
            progress: self,
        }
    }

    /// Done: the bar stays on the terminal with its final figures.
    pub fn finish(self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// Files whose data takes less than this are read without a bar (it would only flash).
pub const BIG: u64 = 16 << 20;

/// How often [`reading_file`] samples the bytes read.
const SAMPLE: Duration = Duration::from_millis(100);

/// Runs `work` (on this thread) with a bar on a terminal for reading `file`'s data `passes`
/// times (a verify reads it once; a restore verifies, then copies), labelled `label`. Shows
/// nothing when stderr is not a terminal, or the file has less than [`BIG`] bytes of data.
pub fn reading_file<T>(file: &File, passes: u64, label: &str, work: impl FnOnce() -> T) -> T {
    if !io::stderr().is_terminal() {
        return work();
    }
    // Data bytes (holes are not read), at most the file's length.
    let data = file
        .metadata()
        .map_or(0, |m| m.len().min(m.blocks().saturating_mul(512)));
    if data < BIG {
        return work();
    }
    let progress = Progress::bytes(data.saturating_mul(passes), label);
    let out = metered(&progress, work);
    progress.finish();
    out
}

/// Runs `work` on this thread while another advances `progress` by what this thread reads.
fn metered<T>(progress: &Progress, work: impl FnOnce() -> T) -> T {
    // Opened here, so `thread-self` is the thread that does the work; read again from offset 0,
    // the file shows the current counters.
    let Ok(io) = File::open("/proc/thread-self/io") else {
        return work();
    };
    let base = rchar(&io).unwrap_or(0);
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let io = &io;
        s.spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(SAMPLE) {
                if let Some(n) = rchar(io) {
                    progress.set(n.saturating_sub(base));
                }
            }
        });
        let out = work();
        drop(stop);
        out
    })
}

/// The `rchar` line of a `/proc/.../io` file.
fn rchar(io: &File) -> Option<u64> {
    let mut buf = [0u8; 512];
    let n = io.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("rchar:"))?
        .trim()
        .parse()
        .ok()
}

/// A reader that advances a [`Progress`] by what it reads.
#[derive(Debug)]
pub struct ProgressRead<'p, R> {
    inner: R,
    progress: &'p Progress,
}

impl<R: Read> Read for ProgressRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use indicatif::TermLike;

    use super::*;

    /// A terminal that records what is written to it.
    #[derive(Debug, Default, Clone)]
    struct FakeTerm(Arc<Mutex<String>>);

    impl TermLike for FakeTerm {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn without_a_terminal_nothing_is_drawn_and_reads_pass_through() {
        let p = Progress::hidden();
        assert!(!p.is_visible());
        let data: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        p.wrap_read(&data[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        p.inc(1 << 40);
        assert_eq!(p.suspend(|| 7), 7);
        p.finish();
    }

    #[test]
    fn a_bar_is_drawn_only_when_stderr_is_a_terminal() {
        // cargo test runs with stderr a pipe in CI, a terminal at a developer's desk: the bar
        // follows whichever it is.
        assert_eq!(
            Progress::bytes(10, "x").is_visible(),
            io::stderr().is_terminal()
        );
    }

    #[test]
    fn a_terminal_sees_label_bytes_and_total() {
        let term = FakeTerm::default();
        let target = ProgressDrawTarget::term_like(Box::new(term.clone()));
        let p = Progress::drawn_on(64 << 10, "verifying s.snap", target);
        assert!(p.is_visible());
        let data = vec![0u8; 64 << 10];
        let mut sink = Vec::new();
        p.wrap_read(&data[..]).read_to_end(&mut sink).unwrap();
        p.finish();
        let drawn = term.0.lock().unwrap().clone();
        assert!(drawn.contains("verifying s.snap"), "{drawn:?}");
        assert!(drawn.contains("64.00 KiB/64.00 KiB"), "{drawn:?}");
        assert!(drawn.contains("ETA"), "{drawn:?}");
    }

    #[test]
    fn the_bytes_this_thread_reads_are_counted() {
        let io = File::open("/proc/thread-self/io").unwrap();
        let before = rchar(&io).expect("rchar in /proc/thread-self/io");
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &[7u8; 100_000]).unwrap();
        let mut buf = vec![0u8; 100_000];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert!(rchar(&io).unwrap() >= before + 100_000);
        // Metering a hidden progress runs the work and returns its value.
        assert_eq!(metered(&Progress::hidden(), || 5), 5);
    }

    #[test]
    fn the_template_is_valid() {
        ProgressStyle::with_template(TEMPLATE).unwrap();
    }
}
