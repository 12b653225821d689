//! The lines of a child's output stream, collected by a thread, for the end-to-end tests that
//! wait for a line (the host's tests and the C ABI's).

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A generous limit for things that take milliseconds on an idle machine.
pub const SLOW: Duration = Duration::from_secs(30);

/// Lines of one output stream, collected by a thread.
#[derive(Clone, Debug, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>, Arc<AtomicBool>);

impl Lines {
    /// Collects the lines of `stream` on a thread (each echoed to stderr, tagged `echo`, when
    /// `SHMSNAP_TEST_ECHO` is set).
    pub fn collect(stream: impl Read + Send + 'static, echo: &'static str) -> Self {
        let lines = Lines::default();
        let (store, eof) = (lines.0.clone(), lines.1.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SHMSNAP_TEST_ECHO").is_some() {
                    eprintln!("[{echo}] {line}");
                }
                store.lock().unwrap().push(line);
            }
            eof.store(true, Ordering::Release);
        });
        lines
    }

    /// Whether the stream has ended (every writer closed it).
    pub fn ended(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Number of lines so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Whether no line has arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything so far, as one string.
    pub fn text(&self) -> String {
        self.all().join("\n")
    }

    /// Waits until a line at index `from` or later satisfies `f`; returns (index, line).
    pub fn wait_from(
        &self,
        from: usize,
        timeout: Duration,
        f: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let end = Instant::now() + timeout;
        loop {
            {
                let v = self.0.lock().unwrap();
                if let Some(i) = (from..v.len()).find(|&i| f(&v[i])) {
                    return Some((i, v[i].clone()));
                }
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a line containing `needle`; panics with `what` after [`SLOW`] (30 s).
    pub fn expect(&self, needle: &str, what: &str) -> String {
        self.wait_from(0, SLOW, |l| l.contains(needle))
            .unwrap_or_else(|| panic!("{what}: no line containing {needle:?} in:\n{}", self.text()))
            .1
    }
}
