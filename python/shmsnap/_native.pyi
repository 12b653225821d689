"""Type stubs of ``shmsnap._native`` (the extension module); ``shmsnap`` re-exports it."""

import sys
from types import TracebackType
from typing import Any, Awaitable, Dict, Optional, Protocol, Tuple, Type, Union, overload

if sys.version_info >= (3, 12):
    from collections.abc import Buffer as _Buffer
else:
    from typing_extensions import Buffer as _Buffer

class _ArrayInterface(Protocol):
    # NumPy arrays export the buffer protocol at run time, but their stubs declare
    # `__buffer__` only for Python >= 3.12: accept them by their array interface too.
    @property
    def __array_interface__(self) -> Dict[str, Any]: ...

#: What the calls taking bytes accept: any object with the buffer protocol.
Buffer = Union[_Buffer, _ArrayInterface]

class Error(Exception):
    """Base class of every error shmsnap raises (OSError aside)."""

class HostRegionError(Error):
    """Region.from_host() found no usable region (not started by the host, taken already, ...)."""

class FormatError(Error):
    """The memory does not hold a valid shmsnap region of the kind asked for."""

class LayoutError(Error):
    """The requested layout is invalid or does not fit; or the memory cannot hold a region."""

class MismatchError(Error):
    """The region is configured with another layout than the one requested."""

    found: Tuple[int, int]
    requested: Tuple[int, int]

class ClaimedError(Error):
    """Another writer holds the region; ``holder`` is its pid."""

    holder: int

class ForeignWriteError(Error):
    """The region changed in a way only another writer can cause."""

class ExhaustedError(Error):
    """The region's sequence numbers or stream offsets are exhausted."""

class PayloadSizeError(Error):
    """The payload is empty or larger than the data ring."""

    len: int
    max: int

class ForkedError(Error):
    """The object was created in the parent process, before os.fork()."""

class ClosedError(Error):
    """The Writer, TripleClient or WriteGrant was closed."""

class Status:
    """What the host status area says is durable."""

    @property
    def seq(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def replica_seq(self) -> int: ...
    def __init__(self, seq: int = 0, generation: int = 0, replica_seq: int = 0) -> None: ...
    def covers(self, seq: int) -> bool:
        """True if commit ``seq`` is durable (seq 0 always is)."""
    def replicated(self, seq: int) -> bool:
        """True if commit ``seq`` is in the host's replica (seq 0 always is)."""

class Region:
    """A shared-memory region: the host's (from_host) or a buffer the program shares (attach)."""

    @staticmethod
    def from_host(name: str = "SHM_SHARED_FD") -> "Region":
        """The region the host passed at fd 3. Once per process, before threads; not inherited by fork."""
    @staticmethod
    def attach(buffer: Buffer) -> "Region":
        """A region over a writable, 8-byte aligned buffer the program shares itself."""
    def __len__(self) -> int: ...
    @property
    def is_host(self) -> bool: ...
    def persisted(self) -> Status:
        """What the host has made durable (wait-free)."""
    def wait_persisted(self, seq: int, timeout: Optional[float] = None) -> bool:
        """Blocks (GIL released) until ``seq`` is durable (True) or the timeout (False)."""
    def wait_replicated(self, seq: int, timeout: Optional[float] = None) -> bool:
        """Blocks (GIL released) until ``seq`` is in the host's replica (True) or the timeout
        (False; a host without --replica never replicates)."""
    def request_snapshot(self) -> None:
        """Asks the host for a prompt snapshot."""
    def persisted_async(self, seq: int, timeout: Optional[float] = None) -> Awaitable[bool]:
        """``await``-able ``wait_persisted`` for asyncio (no polling)."""
    def replicated_async(self, seq: int, timeout: Optional[float] = None) -> Awaitable[bool]:
        """``await``-able ``wait_replicated`` for asyncio (no polling)."""
    def reclaim(self) -> Optional[int]:
        """Clears the claim of a dead writer process and returns its pid (None: unclaimed).

        Raises ClaimedError if the holder may be alive (never reclaimed), FormatError for memory
        that is not a shmsnap region."""
    def _wake_count(self) -> int: ...
    def _wait_change(self, seen: int, timeout: float) -> None: ...
    def _wake_waiters(self) -> None: ...
    def _copy_reference(self, data: Buffer) -> int: ...
    def _copy_reference_words(self, data: Buffer) -> int: ...

class Writer:
    """The single writer of a queue region."""

    def __init__(self, region: Region, *, entries: int = 64, data_size: int = 65536) -> None: ...
    def commit(self, data: Buffer) -> int:
        """Commits ``data`` as the next entry (wait-free); returns its seq."""
    def newest(self) -> Optional[bytes]:
        """The newest entry's payload (a copy), or None."""
    @property
    def newest_seq(self) -> Optional[int]: ...
    @property
    def next_seq(self) -> int: ...
    @property
    def entries(self) -> int: ...
    @property
    def data_size(self) -> int: ...
    @property
    def region(self) -> Region: ...
    def close(self) -> None:
        """Gives up the region (idempotent)."""
    def __enter__(self) -> "Writer": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class WriteGrant:
    """A triple buffer taken for writing: a context manager publishing on a normal exit."""

    @property
    def seq(self) -> int: ...
    def __len__(self) -> int: ...
    def write(self, data: Buffer, offset: int = 0) -> None:
        """Copies ``data`` into the buffer at ``offset``."""
    def read(self, offset: int = 0, length: Optional[int] = None) -> bytes:
        """Reads back ``length`` bytes at ``offset``."""
    @overload
    def __getitem__(self, key: int) -> int: ...
    @overload
    def __getitem__(self, key: slice) -> bytes: ...
    @overload
    def __setitem__(self, key: int, value: int) -> None: ...
    @overload
    def __setitem__(self, key: slice, value: Buffer) -> None: ...
    def publish(self) -> int:
        """Publishes the buffer; returns its seq."""
    def discard(self) -> None:
        """Discards the buffer."""
    def __enter__(self) -> "WriteGrant": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException] = None,
        tb: Optional[TracebackType] = None,
    ) -> bool: ...

class TripleClient:
    """The single client of a triple-buffer region."""

    def __init__(self, region: Region, buffer_size: int, *, buffers: int = 3) -> None: ...
    def write(self) -> WriteGrant:
        """Takes a buffer for writing; use it in a ``with`` block."""
    def publish(self, data: Buffer) -> int:
        """Publishes ``data`` at the start of a fresh buffer; returns its seq."""
    def read_newest(self) -> Optional[bytes]:
        """The newest published state (whole buffer, a copy), or None."""
    def read_newest_into(self, out: Buffer) -> Optional[int]:
        """Copies the newest state's first len(out) bytes into ``out``; returns its seq or None."""
    @property
    def newest_seq(self) -> Optional[int]: ...
    @property
    def next_seq(self) -> int: ...
    @property
    def buffer_size(self) -> int: ...
    @property
    def buffers(self) -> int: ...
    @property
    def region(self) -> Region: ...
    def close(self) -> None:
        """Gives up the region (idempotent)."""
    def __enter__(self) -> "TripleClient": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

def _after_fork_in_child() -> None: ...
