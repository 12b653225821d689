//! `shmsnap.Region` (the memory: the host's, or a buffer the program shares) with the
//! durability calls of DESIGN §14, and `shmsnap.Status`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use shmsnap_core::status as core_status;
use shmsnap_linux::listen::{
    open_client_region, DEFAULT_FD_NAME, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID,
};
use shmsnap_linux::reclaim::{self, ReclaimError};
use shmsnap_linux::status as linux_status;

use crate::memory::Memory;
use crate::pybuf::Export;

/// Longest single futex sleep of a wait. A wait is woken by the host's publish; the cap only
/// bounds how late it notices a signal (Ctrl-C) or a cancellation that arrived in the instant
/// between its last check and its sleep (neither changes the futex word).
const SLICE: Duration = Duration::from_secs(1);

/// A shared-memory region: the host's (`Region.from_host()`) or a writable buffer the program
/// shares itself (`Region.attach(buffer)`).
///
/// A region holds a queue (`Writer`) or a triple buffer (`TripleClient`), one writer at a
/// time. Its durability calls say what the host has made durable: `persisted()`,
/// `wait_persisted(seq, timeout)`, `wait_replicated(seq, timeout)`, `request_snapshot()`,
/// `await persisted_async(seq)` and `await replicated_async(seq)`.
/// The memory is released (unmapped, or the buffer's export released) when the region and
/// every Writer/TripleClient on it are gone.
#[pyclass(frozen, module = "shmsnap")]
pub(crate) struct Region {
    mem: Arc<Memory>,
    /// The asyncio waiter (`shmsnap._aio.Waiter`), made at the first `persisted_async` or
    /// `replicated_async`.
    waiter: PyOnceLock<Py<PyAny>>,
}

impl Region {
    /// The memory, checked to belong to this process (not inherited through `os.fork()`).
    pub fn mem(&self) -> PyResult<&Arc<Memory>> {
        self.mem.check()?;
        Ok(&self.mem)
    }

    fn new(mem: Memory) -> Self {
        Region {
            mem: Arc::new(mem),
            waiter: PyOnceLock::new(),
        }
    }

    /// The awaitable of ``persisted_async`` (``replicated == false``) and
    /// ``replicated_async``: ``shmsnap._aio.status_async`` with this region's waiter.
    fn await_status<'py>(
        slf: &Bound<'py, Self>,
        seq: u64,
        timeout: Option<f64>,
        replicated: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        deadline(timeout)?;
        let aio = py.import("shmsnap._aio")?;
        let waiter = slf
            .get()
            .waiter
            .get_or_try_init(py, || aio.getattr("Waiter")?.call0().map(Bound::unbind))?;
        aio.getattr("status_async")?
            .call1((slf, waiter.bind(py), seq, timeout, replicated))
    }

    /// The loop of ``wait_persisted`` and ``wait_replicated``: until ``done(status)``
    /// (``True``) or the timeout (``False``), sleeping in slices of at most [`SLICE`] with the
    /// GIL released and running the signal handlers between them.
    fn wait_until(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        done: impl Fn(core_status::Status) -> bool,
    ) -> PyResult<bool> {
        let deadline = deadline(timeout)?;
        let words = self.mem()?.words();
        loop {
            // Counter first, status second: a publish after this load changes the counter,
            // so the sleep below returns at once instead of missing it.
            let seen = core_status::wake_count(words);
            if done(core_status::persisted(words)) {
                return Ok(true);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => SLICE,
            };
            if left.is_zero() {
                return Ok(false);
            }
            py.detach(|| linux_status::wait_status_change(words, seen, left.min(SLICE)))?;
            py.check_signals()?;
        }
    }
}

/// Converts a timeout in seconds (`None`: forever) to a deadline.
fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    let Some(t) = timeout else { return Ok(None) };
    if t.is_nan() || t < 0.0 {
        return Err(PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds or None, not {t}"
        )));
    }
    // A timeout too large for a Duration or an Instant is forever.
    Ok(Duration::try_from_secs_f64(t)
        .ok()
        .and_then(|d| Instant::now().checked_add(d)))
}

#[pymethods]
impl Region {
    /// The region the shmsnap host passed to this process at fd 3 (the systemd way:
    /// ``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``), mapped read-write, with write
    /// tracking registered so the host can snapshot only the pages this process writes.
    ///
    /// Open it **once per process, early, before starting threads**: it takes the fd and
    /// removes the ``LISTEN_*`` variables from the environment (also from ``os.environ``),
    /// so a second call raises ``HostRegionError`` and children never inherit them. The
    /// region is **not inherited by os.fork()**: the child must not use this object (it
    /// raises ``ForkedError``; its stores would escape the host's write tracking), and the
    /// host may map the region so that a child does not see it at all.
    ///
    /// Raises ``HostRegionError`` when the program was not started by ``shmsnap run`` (or
    /// systemd with an fd store), or the fd is not a usable region.
    #[staticmethod]
    #[pyo3(signature = (name = DEFAULT_FD_NAME))]
    fn from_host(py: Python<'_>, name: &str) -> PyResult<Self> {
        let opened = open_client_region(name);
        // Python keeps its own copy of the environment: drop the variables there too (also
        // when they were wrong), as `take_listen_fd` did for the C environment.
        let environ = py.import("os")?.getattr("environ")?;
        for var in [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES] {
            environ.call_method1("pop", (var, py.None()))?;
        }
        let (memfd, map) = opened.map_err(crate::errors::listen)?;
        Ok(Region::new(Memory::host(memfd, map)))
    }

    /// A region over ``buffer``, writable memory the program shares itself with a host
    /// (``mmap.mmap`` of a memfd, ``multiprocessing.shared_memory.SharedMemory.buf``, ...) or
    /// keeps private (a ``bytearray``, for tests).
    ///
    /// The buffer must be writable, contiguous and start at an 8-byte boundary (any
    /// ``mmap`` does); the region is its first ``len(buffer) // 8 * 8`` bytes. The region
    /// holds an export of the buffer until it is released, so the buffer cannot be resized
    /// or closed meanwhile (``BufferError``).
    ///
    /// **Contract**: while the region lives, nothing in this process reads or writes the
    /// buffer except through shmsnap (shmsnap accesses it only as atomic 64-bit words; a
    /// concurrent plain access from another thread would race with them), and a file behind
    /// an ``mmap`` must not shrink (an access past its end kills the process with SIGBUS: use
    /// a memfd sealed against shrinking). Other processes may access it only as the shmsnap
    /// protocol allows; whatever they do is treated as hostile input.
    ///
    /// Raises ``TypeError`` for an object without a writable contiguous buffer,
    /// ``LayoutError`` for a misaligned or shorter-than-8-bytes one, ``ClaimedError`` if
    /// the memory is already attached as a region in this process.
    #[staticmethod]
    fn attach(py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<Self> {
        let export = Export::writable(buffer)?;
        Ok(Region::new(Memory::buffer(py, export)?))
    }

    /// Length of the region's memory in bytes.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.mem()?.len())
    }

    /// ``True`` for the host's region (``from_host``), ``False`` for an attached buffer.
    #[getter]
    fn is_host(&self) -> bool {
        self.mem.is_host()
    }

    fn __repr__(&self) -> String {
        let kind = if self.mem.is_host() { "host" } else { "buffer" };
        format!("<shmsnap.Region {kind}, {} bytes>", self.mem.len())
    }

    /// What the host says is durable: a ``Status`` (seq, generation, replica_seq). Three
    /// loads, never blocks. A commit ``c`` is durable once ``persisted().covers(c)``.
    ///
    /// All zeros until the host has persisted something, for a region without a host, and
    /// under the exit strategy (where the host does not maintain it).
    fn persisted(&self) -> PyResult<Status> {
        Ok(core_status::persisted(self.mem()?.words()).into())
    }

    /// Blocks until the host's status covers commit ``seq`` (``True``), or ``timeout``
    /// seconds pass (``False``; ``None`` waits for ever). Releases the GIL while it sleeps,
    /// on the host's futex word (woken by each publish, not polling). Ctrl-C and other signal
    /// handlers run while it waits (``KeyboardInterrupt`` propagates).
    ///
    /// Pair it with ``request_snapshot()`` to have the host snapshot at once rather than at
    /// its next interval. Never on the commit path: ``commit`` stays wait-free.
    #[pyo3(signature = (seq, timeout = None))]
    fn wait_persisted(&self, py: Python<'_>, seq: u64, timeout: Option<f64>) -> PyResult<bool> {
        self.wait_until(py, timeout, |s| s.covers(seq))
    }

    /// Blocks until commit ``seq`` is in the host's replica (``True``: a point holding it is
    /// durable in the object store, ``shmsnap run --replica URL``), or ``timeout`` seconds
    /// pass (``False``; ``None`` waits for ever). The same wait as ``wait_persisted`` (GIL
    /// released, woken by the host's uploader at every point it put, signals run).
    ///
    /// A host without a replica never publishes a replica seq: the wait then ends only at
    /// the timeout. ``persisted()`` tells the two apart as far as the client can: a ``seq``
    /// covering the commit with a ``replica_seq`` of 0. Pair it with ``request_snapshot()``:
    /// the host uploads persisted points only.
    #[pyo3(signature = (seq, timeout = None))]
    fn wait_replicated(&self, py: Python<'_>, seq: u64, timeout: Option<f64>) -> PyResult<bool> {
        self.wait_until(py, timeout, |s| s.replicated(seq))
    }

    /// Asks the host for a prompt snapshot (bumps the request word and wakes the host's
    /// watcher: one syscall). Requests coalesce. Call it from one thread at a time.
    fn request_snapshot(&self) -> PyResult<()> {
        linux_status::request_snapshot(self.mem()?.words())?;
        Ok(())
    }

    /// Clears the region's writer claim if the process holding it is **dead**, and returns
    /// that process's pid; ``None`` if nobody holds the claim. For programs that are their
    /// own host (``Region.attach`` of memory shared with other processes): under the shmsnap
    /// host the host reclaims by itself, and no client needs this.
    ///
    /// Call it when ``Writer``/``TripleClient`` raised ``ClaimedError`` and the process named
    /// by its ``holder`` crashed or was killed (a clean ``close()`` or exit releases the claim),
    /// then open the writer again: it recovers what the dead writer left, as after any crash.
    ///
    /// Liveness: ``kill(pid, 0)`` failing with ``ESRCH`` is dead; an existing pid is dead only
    /// if ``/proc/<pid>/stat`` shows a zombie (exited, not yet reaped) with no live thread. Any
    /// doubt counts as alive: a live holder's claim is never reclaimed. **Limits**: a later
    /// process that reused the pid looks alive (the claim stays until it is gone too); the
    /// pid is looked up in this process's pid namespace, so across pid namespaces
    /// (containers) a live holder may look dead: use it only for memory shared within one pid
    /// namespace.
    ///
    /// Raises ``ClaimedError`` (``holder``: its pid) if the holder may be alive,
    /// ``FormatError`` if the memory holds neither an unconfigured region nor a valid queue or
    /// triple header (it is left alone), ``LayoutError`` if it is shorter than 520 bytes.
    fn reclaim(&self, py: Python<'_>) -> PyResult<Option<u32>> {
        match reclaim::reclaim_if_dead(self.mem()?.words()) {
            Ok(holder) => Ok(Some(holder.pid())),
            Err(ReclaimError::Unclaimed | ReclaimError::Changed { now: None, .. }) => Ok(None),
            Err(e) => Err(crate::errors::reclaim(py, e)),
        }
    }

    /// ``await region.persisted_async(seq, timeout=None)``: ``wait_persisted`` for asyncio.
    ///
    /// Returns at once if ``seq`` is covered; otherwise one helper thread per region sleeps
    /// on the host's futex word (GIL released, woken by each publish, no polling) and
    /// completes the awaiting futures through ``loop.call_soon_threadsafe``. Cancelling the
    /// awaiting task (or ``asyncio.wait_for``) is supported; the thread exits when no await
    /// is pending.
    #[pyo3(signature = (seq, timeout = None))]
    fn persisted_async<'py>(
        slf: &Bound<'py, Self>,
        seq: u64,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::await_status(slf, seq, timeout, false)
    }

    /// ``await region.replicated_async(seq, timeout=None)``: ``wait_replicated`` for asyncio,
    /// answered by the same helper thread as ``persisted_async``.
    #[pyo3(signature = (seq, timeout = None))]
    fn replicated_async<'py>(
        slf: &Bound<'py, Self>,
        seq: u64,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::await_status(slf, seq, timeout, true)
    }

    /// The host's wake counter (for ``shmsnap._aio``): load it before ``persisted()``.
    fn _wake_count(&self) -> PyResult<u32> {
        Ok(core_status::wake_count(self.mem()?.words()))
    }

    /// One futex sleep while the wake counter is ``seen``, at most ``timeout`` seconds
    /// (capped at one second), GIL released (for ``shmsnap._aio``).
    fn _wait_change(&self, py: Python<'_>, seen: u32, timeout: f64) -> PyResult<()> {
        let words = self.mem()?.words();
        let t = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(SLICE);
        py.detach(|| linux_status::wait_status_change(words, seen, t.min(SLICE)))?;
        Ok(())
    }

    /// The commit benchmark's reference (``python/bench/commit.py``): copies ``data`` into
    /// the region at byte 8192 with ``memcpy`` and nothing else. Refused while a writer works
    /// on the region.
    fn _copy_reference(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        crate::bench::copy_reference(py, self.mem()?, data, false)
    }

    /// As ``_copy_reference``, with the word copy a commit uses for its payload.
    fn _copy_reference_words(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        crate::bench::copy_reference(py, self.mem()?, data, true)
    }

    /// Wakes every waiter on the status word so it re-checks (for ``shmsnap._aio``).
    fn _wake_waiters(&self) -> PyResult<()> {
        linux_status::wake_status_waiters(self.mem()?.words())?;
        Ok(())
    }
}

/// What the host status area says is durable (``Region.persisted()``).
///
/// ``seq``: newest commit contained in a durable local snapshot (0: none); ``generation``:
/// the snapshot file's generation; ``replica_seq``: newest commit in the replica (0: none).
#[pyclass(frozen, eq, module = "shmsnap")]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    /// Newest seq in a durable local snapshot; 0: none.
    #[pyo3(get)]
    seq: u64,
    /// Generation of that snapshot (0: none).
    #[pyo3(get)]
    generation: u64,
    /// Newest seq in the replica; 0: none.
    #[pyo3(get)]
    replica_seq: u64,
}

impl From<core_status::Status> for Status {
    fn from(s: core_status::Status) -> Self {
        Status {
            seq: s.seq,
            generation: s.generation,
            replica_seq: s.replica_seq,
        }
    }
}

impl Status {
    fn core(&self) -> core_status::Status {
        core_status::Status {
            seq: self.seq,
            generation: self.generation,
            replica_seq: self.replica_seq,
        }
    }
}

#[pymethods]
impl Status {
    #[new]
    #[pyo3(signature = (seq = 0, generation = 0, replica_seq = 0))]
    fn new(seq: u64, generation: u64, replica_seq: u64) -> Self {
        Status {
            seq,
            generation,
            replica_seq,
        }
    }

    /// ``True`` if commit ``seq`` is durable: a restore brings back its state or a newer
    /// one. Seq 0 (nothing committed) is always covered.
    fn covers(&self, seq: u64) -> bool {
        self.core().covers(seq)
    }

    /// ``True`` if commit ``seq`` is in the host's replica (durable in the object store).
    /// Seq 0 is always replicated; under a host without a replica, nothing else is.
    fn replicated(&self, seq: u64) -> bool {
        self.core().replicated(seq)
    }

    fn __repr__(&self) -> String {
        format!(
            "Status(seq={}, generation={}, replica_seq={})",
            self.seq, self.generation, self.replica_seq
        )
    }
}
