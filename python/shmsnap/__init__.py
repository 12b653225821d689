"""shmsnap: state that survives crashes, kill -9 and restarts, for Python programs.

The program (the *client*) keeps its state in a shared-memory region that the shmsnap host
(``shmsnap run``) restores before the program starts and snapshots to disk while it runs.
Commits are wait-free: no syscall, no lock, no waiting for the disk.

Queue strategy (``shmsnap run --strategy queue``): commit whole states, read the newest back::

    import json, shmsnap

    region = shmsnap.Region.from_host()          # fd 3, passed by `shmsnap run`
    writer = shmsnap.Writer(region, data_size=1 << 20)
    state = json.loads(writer.newest() or b"{}")  # the state the host restored
    state["runs"] = state.get("runs", 0) + 1
    seq = writer.commit(json.dumps(state).encode())
    region.request_snapshot()                     # optional: snapshot now
    region.wait_persisted(seq, timeout=5)         # optional: True once on disk

Triple-buffer strategy (``--strategy triple``): publish fixed-size states (``TripleClient``,
``with client.write() as buf: ...``).

Errors are ``shmsnap.Error`` subclasses (``OSError`` for failing system calls).
See ``python/README.md`` in the shmsnap repository for the guarantees and the contracts.
"""

from ._native import (
    ClaimedError,
    ClosedError,
    Error,
    ExhaustedError,
    ForeignWriteError,
    ForkedError,
    FormatError,
    HostRegionError,
    LayoutError,
    MismatchError,
    PayloadSizeError,
    Region,
    Status,
    TripleClient,
    WriteGrant,
    Writer,
)

__all__ = [
    "ClaimedError",
    "ClosedError",
    "Error",
    "ExhaustedError",
    "ForeignWriteError",
    "ForkedError",
    "FormatError",
    "HostRegionError",
    "LayoutError",
    "MismatchError",
    "PayloadSizeError",
    "Region",
    "Status",
    "TripleClient",
    "WriteGrant",
    "Writer",
]

__version__ = "0.1.0"
