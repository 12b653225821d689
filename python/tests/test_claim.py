"""One writer per region across processes, and Region.reclaim() of a dead holder's claim:
process A (a subprocess) holds the queue writer of a shared memfd; this process (B) is refused
with A's pid, cannot reclaim while A lives, and after A is SIGKILLed reclaims, finds A's last
commit and writes."""

from __future__ import annotations

import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from typing import Iterator, Tuple

import pytest

import shmsnap

SIZE = 1 << 20
CLAIM_WORD = 64

HOLDER = """
import mmap, os, sys, time
import shmsnap
m = mmap.mmap(int(sys.argv[1]), %d)
w = shmsnap.Writer(shmsnap.Region.attach(m), entries=16, data_size=4096)
w.commit(b"from A")
print("held", os.getpid(), flush=True)
time.sleep(600)
""" % SIZE


@pytest.fixture
def memfd() -> Iterator[Tuple[int, mmap.mmap]]:
    """A shared memfd (its fd, for a child) and this process's mapping of it."""
    fd = os.memfd_create("shmsnap-claim-test", 0)  # no MFD_CLOEXEC: handed to A
    os.ftruncate(fd, SIZE)
    m = mmap.mmap(fd, SIZE)
    yield fd, m
    os.close(fd)


def start_holder(fd: int) -> "subprocess.Popen[str]":
    # -I: isolated, so `import shmsnap` finds the installed package, not the source tree.
    a = subprocess.Popen(
        [sys.executable, "-I", "-c", HOLDER, str(fd)],
        pass_fds=(fd,),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert a.stdout is not None
    line = a.stdout.readline()
    assert line == "held %d\n" % a.pid, line
    return a


def is_zombie(pid: int) -> bool:
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(") ", 1)[1].startswith("Z")


def test_a_dead_holders_claim_is_reclaimed_by_another_process_and_a_live_ones_never(
    memfd: Tuple[int, mmap.mmap],
) -> None:
    fd, m = memfd
    a = start_holder(fd)
    try:
        region = shmsnap.Region.attach(m)
        with pytest.raises(shmsnap.ClaimedError) as e:
            shmsnap.Writer(region, entries=16, data_size=4096)
        assert e.value.holder == a.pid
        assert "pid %d " % a.pid in str(e.value)

        with pytest.raises(shmsnap.ClaimedError) as e:
            region.reclaim()
        assert e.value.holder == a.pid, "a live holder's claim was reclaimed"
        assert "may be alive" in str(e.value)

        # SIGKILL: A never releases its claim. Unreaped, it is a zombie: that counts as dead.
        os.kill(a.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not is_zombie(a.pid):
            assert time.monotonic() < deadline, "A did not die"
            time.sleep(0.005)
        assert region.reclaim() == a.pid
        assert region.reclaim() is None, "nothing left to reclaim"
    finally:
        a.kill()
        a.wait()
        if a.stdout:
            a.stdout.close()

    with shmsnap.Writer(region, entries=16, data_size=4096) as w:
        assert w.newest() == b"from A"
        w.commit(b"from B")
        assert w.newest() == b"from B"
        # This process holds it now, and is alive.
        with pytest.raises(shmsnap.ClaimedError) as e:
            region.reclaim()
        assert e.value.holder == os.getpid()


def test_reclaim_refuses_memory_that_is_not_a_region(memfd: Tuple[int, mmap.mmap]) -> None:
    _, m = memfd
    region = shmsnap.Region.attach(m)
    assert region.reclaim() is None  # unconfigured, unclaimed
    # A nonzero magic that is not shmsnap's, and a nonzero word where the claim would be.
    struct.pack_into("<Q", m, 0, 0x1234)
    struct.pack_into("<Q", m, 8 * CLAIM_WORD, 2**32 - 2)
    with pytest.raises(shmsnap.FormatError, match="not a shmsnap region"):
        region.reclaim()
    assert struct.unpack_from("<Q", m, 8 * CLAIM_WORD)[0] == 2**32 - 2, "touched"
    with pytest.raises(shmsnap.LayoutError):
        shmsnap.Region.attach(bytearray(8 * CLAIM_WORD)).reclaim()
