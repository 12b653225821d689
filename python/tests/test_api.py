"""The Python API over memory the test shares itself (no host): queue, triple, durability,
the one-writer and fork guards."""

from __future__ import annotations

import array
import asyncio
import gc
import mmap
import os
import signal
import struct
import threading
import time

import pytest

import shmsnap

PAGE = 4096


def word(buf: mmap.mmap, i: int) -> int:
    return int(struct.unpack_from("<Q", buf, 8 * i)[0])


def set_word(buf: mmap.mmap, i: int, v: int) -> None:
    struct.pack_into("<Q", buf, 8 * i, v)


# --- queue ---------------------------------------------------------------------------------


def test_commits_of_every_buffer_kind_read_back_as_bytes(shm: mmap.mmap) -> None:
    w = shmsnap.Writer(shmsnap.Region.attach(shm), entries=16, data_size=4096)
    assert w.newest() is None and w.newest_seq is None and w.next_seq == 1
    payloads = [
        b"bytes",
        bytearray(b"bytearray"),
        memoryview(b"a memoryview of bytes"),
        array.array("q", [1, 2, 3]),
        memoryview(bytearray(b"xxsliced"))[2:],
    ]
    for i, p in enumerate(payloads, start=1):
        assert w.commit(p) == i
        assert w.newest() == bytes(p)
        assert w.newest_seq == i
    assert w.next_seq == len(payloads) + 1
    assert (w.entries, w.data_size) == (16, 4096)


def test_numpy_arrays_commit_their_bytes(shm: mmap.mmap) -> None:
    np = pytest.importorskip("numpy")
    w = shmsnap.Writer(shmsnap.Region.attach(shm))
    a = np.arange(100, dtype=np.float64)
    w.commit(a)
    assert w.newest() == a.tobytes()
    with pytest.raises(TypeError, match="contiguous"):
        w.commit(a[::2])  # not contiguous


def test_a_new_writer_recovers_the_newest_state_and_continues_the_seqs(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    with shmsnap.Writer(region, entries=8, data_size=256) as w:
        for i in range(100):  # wraps the ring many times
            last = w.commit(f"state {i}".encode() * (i % 5 + 1))
    w2 = shmsnap.Writer(region, entries=8, data_size=256)
    assert w2.newest() == b"state 99" * 5
    assert w2.newest_seq == last
    assert w2.commit(b"next") == last + 1


def test_payload_size_errors_name_the_sizes(shm: mmap.mmap) -> None:
    w = shmsnap.Writer(shmsnap.Region.attach(shm), entries=8, data_size=1024)
    with pytest.raises(shmsnap.PayloadSizeError) as e:
        w.commit(b"")
    assert (e.value.len, e.value.max) == (0, 1024)
    with pytest.raises(shmsnap.PayloadSizeError) as e:
        w.commit(b"x" * 1025)
    assert (e.value.len, e.value.max) == (1025, 1024)
    assert w.commit(b"x" * 1024) == 1
    with pytest.raises(TypeError):
        w.commit(42)  # type: ignore[arg-type]


def test_bad_requests_are_layout_errors(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    with pytest.raises(shmsnap.LayoutError, match="power of two"):
        shmsnap.Writer(region, entries=3)
    with pytest.raises(shmsnap.LayoutError, match="too small"):
        shmsnap.Writer(region, data_size=1 << 21)
    with pytest.raises(shmsnap.LayoutError):
        shmsnap.TripleClient(region, 1 << 20)  # 3 buffers of 1 MiB do not fit in 1 MiB
    # The failed attempts left the region unclaimed and unconfigured.
    assert shmsnap.Writer(region).commit(b"ok") == 1


def test_reopening_with_another_layout_is_a_mismatch(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    shmsnap.Writer(region, entries=16, data_size=4096).close()
    with pytest.raises(shmsnap.MismatchError) as e:
        shmsnap.Writer(region, entries=32, data_size=4096)
    assert e.value.found == (16, 4096) and e.value.requested == (32, 4096)


def test_one_writer_per_region_until_closed(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    w = shmsnap.Writer(region)
    with pytest.raises(shmsnap.ClaimedError) as e:
        shmsnap.Writer(region)
    assert e.value.holder == os.getpid()
    with pytest.raises(shmsnap.ClaimedError):
        shmsnap.TripleClient(region, PAGE)
    w.close()
    w.close()  # idempotent
    with pytest.raises(shmsnap.ClosedError):
        w.commit(b"late")
    with shmsnap.Writer(region) as w2:
        w2.commit(b"x")
    w3 = shmsnap.Writer(region)
    del w3
    gc.collect()
    shmsnap.Writer(region)  # the collected writer released its claim


def test_the_same_memory_cannot_be_attached_twice(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    with pytest.raises(shmsnap.ClaimedError):
        shmsnap.Region.attach(memoryview(shm)[PAGE:])  # overlaps
    del region
    gc.collect()
    shmsnap.Region.attach(shm)


def test_the_region_pins_its_buffer() -> None:
    buf = bytearray(64 * PAGE)
    region = shmsnap.Region.attach(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")  # a resize would move the memory under the region
    w = shmsnap.Writer(region, entries=4, data_size=1024)
    del region  # the writer keeps the memory
    w.commit(b"still mapped")
    assert w.newest() == b"still mapped"
    del w
    gc.collect()
    buf.extend(b"x")  # released with the last user


def test_unsuitable_buffers_are_refused() -> None:
    with pytest.raises(TypeError, match="writable"):
        shmsnap.Region.attach(b"read-only bytes" * 100)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        shmsnap.Region.attach(42)  # type: ignore[arg-type]
    with pytest.raises(shmsnap.LayoutError, match="8-byte boundary"):
        shmsnap.Region.attach(memoryview(bytearray(PAGE * 4))[1:])
    with pytest.raises(shmsnap.LayoutError):
        shmsnap.Region.attach(bytearray(4))
    with pytest.raises(shmsnap.LayoutError, match="too small"):
        shmsnap.Writer(shmsnap.Region.attach(bytearray(PAGE)))


def test_from_host_outside_the_host_is_a_host_region_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LISTEN_PID", raising=False)
    with pytest.raises(shmsnap.HostRegionError, match="LISTEN_PID is not set"):
        shmsnap.Region.from_host()
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "SHM_SHARED_FD")
    with pytest.raises(shmsnap.HostRegionError, match="meant for another process"):
        shmsnap.Region.from_host()
    assert "LISTEN_PID" not in os.environ, "the variables must leave os.environ too"


# --- triple --------------------------------------------------------------------------------


def test_a_write_grant_publishes_on_exit_and_discards_on_an_exception(shm: mmap.mmap) -> None:
    c = shmsnap.TripleClient(shmsnap.Region.attach(shm), 100)
    assert c.buffer_size == PAGE and c.buffers == 3
    assert c.read_newest() is None and c.newest_seq is None
    with c.write() as buf:
        assert len(buf) == PAGE and buf.seq == 1
        buf[:5] = b"first"
        buf[5] = 33
        assert buf[:6] == b"first!" and buf[5] == 33 and buf[-1] == buf[PAGE - 1]
    newest = c.read_newest()
    assert newest is not None and newest[:6] == b"first!" and c.newest_seq == 1
    with pytest.raises(ZeroDivisionError):
        with c.write() as buf:
            buf[:6] = b"second"
            1 / 0
    newest = c.read_newest()
    assert newest is not None and newest[:6] == b"first!", "a raising block publishes nothing"
    assert c.publish(b"third") == 2, "the discarded seq is not consumed"
    newest = c.read_newest()
    assert newest is not None and newest[:5] == b"third"


def test_a_grant_cannot_be_used_after_its_block(shm: mmap.mmap) -> None:
    c = shmsnap.TripleClient(shmsnap.Region.attach(shm), PAGE)
    with c.write() as buf:
        buf.write(b"abc")
    for act in (lambda: buf.write(b"late"), lambda: buf[:1], buf.publish, buf.discard):
        with pytest.raises(shmsnap.ClosedError):
            act()
    g = c.write()
    g.publish()
    with pytest.raises(shmsnap.ClosedError):
        g.publish()
    with c.write() as buf2:
        with pytest.raises(shmsnap.ClosedError):
            buf.write(b"an older grant")  # must not reach the new grant's buffer
        buf2.discard()  # ended inside the block: the exit does nothing more


def test_grant_slices_have_a_fixed_size(shm: mmap.mmap) -> None:
    c = shmsnap.TripleClient(shmsnap.Region.attach(shm), PAGE)
    with c.write() as buf:
        with pytest.raises(ValueError, match="cannot assign 3 bytes"):
            buf[:] = b"abc"
        with pytest.raises(ValueError, match="step 1"):
            buf[::2] = b"ab"
        with pytest.raises(IndexError):
            buf[PAGE] = 1
        with pytest.raises(IndexError):
            buf.write(b"xy", offset=PAGE - 1)
        with pytest.raises(TypeError):
            buf[0] = 256
        buf[PAGE - 2 :] = b"yz"
        assert buf.read(PAGE - 2) == b"yz"
        buf[:] = bytes(range(256)) * (PAGE // 256)
    newest = c.read_newest()
    assert newest == bytes(range(256)) * (PAGE // 256)


def test_one_grant_at_a_time_and_a_dropped_grant_is_discarded(shm: mmap.mmap) -> None:
    c = shmsnap.TripleClient(shmsnap.Region.attach(shm), PAGE)
    g = c.write()
    with pytest.raises(shmsnap.Error, match="grant .* is open"):
        c.write()
    with pytest.raises(shmsnap.Error, match="grant .* is open"):
        c.read_newest()
    assert c.buffer_size == PAGE  # the layout stays readable
    del g
    gc.collect()
    assert c.publish(b"after") == 1


def test_read_newest_into_fills_a_caller_buffer(shm: mmap.mmap) -> None:
    c = shmsnap.TripleClient(shmsnap.Region.attach(shm), 2 * PAGE)
    out = bytearray(10)
    assert c.read_newest_into(out) is None and out == bytearray(10)
    seq = c.publish(b"0123456789abcdef")
    assert c.read_newest_into(out) == seq and out == b"0123456789"
    with pytest.raises(IndexError):
        c.read_newest_into(bytearray(3 * PAGE))
    np = pytest.importorskip("numpy")
    a = np.arange(512, dtype=np.int64)
    c.publish(a)
    b = np.zeros(512, dtype=np.int64)
    c.read_newest_into(b)
    assert (a == b).all()


def test_queue_and_triple_regions_are_not_each_other(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    shmsnap.TripleClient(region, PAGE).close()
    with pytest.raises(shmsnap.FormatError, match="triple"):
        shmsnap.Writer(region)
    other = bytearray(64 * PAGE)
    r2 = shmsnap.Region.attach(other)
    shmsnap.Writer(r2).close()
    with pytest.raises(shmsnap.FormatError, match="strategy"):
        shmsnap.TripleClient(r2, PAGE)


# --- durability ----------------------------------------------------------------------------

STATUS_SEQ, STATUS_GEN, REPLICA_SEQ, STATUS_WAKE, REQUEST = 32, 33, 34, 35, 48


def test_the_status_is_what_the_host_wrote(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    assert region.persisted() == shmsnap.Status()
    assert region.persisted().covers(0) and not region.persisted().covers(1)
    set_word(shm, STATUS_GEN, 7)
    set_word(shm, STATUS_SEQ, 5)
    s = region.persisted()
    assert (s.seq, s.generation, s.replica_seq) == (5, 7, 0)
    assert s.covers(5) and not s.covers(6)
    assert region.wait_persisted(5, timeout=0)
    assert region.wait_persisted(4)


def test_wait_persisted_times_out_with_false(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    start = time.monotonic()
    assert region.wait_persisted(1, timeout=0.1) is False
    assert 0.09 < time.monotonic() - start < 5
    with pytest.raises(ValueError):
        region.wait_persisted(1, timeout=-1)
    with pytest.raises(ValueError):
        region.wait_persisted(1, timeout=float("nan"))


def test_a_signal_handler_interrupts_wait_persisted(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)

    class Alarm(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Alarm()

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        start = time.monotonic()
        with pytest.raises(Alarm):
            region.wait_persisted(1)  # for ever, but Ctrl-C-like signals get through
        assert time.monotonic() - start < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_wait_persisted_releases_the_gil(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    stamps: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            stamps.append(time.monotonic())
            time.sleep(0.001)

    t = threading.Thread(target=spin)
    t.start()
    try:
        t0 = time.monotonic()
        region.wait_persisted(1, timeout=1.0)
        t1 = time.monotonic()
    finally:
        stop.set()
        t.join()
    # The other thread ran in the middle of the wait, not only around it (a thread that
    # held the GIL while sleeping would let it run only before and after).
    middle = [s for s in stamps if t0 + 0.2 < s < t1 - 0.2]
    assert len(middle) > 10, f"{len(middle)} runs of the other thread during the wait"


def test_request_snapshot_bumps_the_request_word(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    assert word(shm, REQUEST) == 0
    region.request_snapshot()
    region.request_snapshot()
    assert word(shm, REQUEST) == 2


def fake_host_publishes(shm: mmap.mmap, delay: float, seq: int) -> int:
    """A forked process that stores a status into the shared memory after `delay` (it wakes
    no futex: the waiter finds it at its next re-check, within one second)."""
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(delay)
            set_word(shm, STATUS_GEN, 1)
            set_word(shm, STATUS_SEQ, seq)
            set_word(shm, STATUS_WAKE, word(shm, STATUS_WAKE) + 1)
        finally:
            os._exit(0)
    return pid


def test_persisted_async_answers_at_once_when_covered_and_false_at_its_timeout(
    shm: mmap.mmap,
) -> None:
    region = shmsnap.Region.attach(shm)

    async def main() -> tuple[bool, bool]:
        covered = await region.persisted_async(0)
        late = await region.persisted_async(1, timeout=0.1)
        return covered, late

    assert asyncio.run(main()) == (True, False)


def test_persisted_async_completes_when_the_host_publishes(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    pid = fake_host_publishes(shm, 0.2, 3)

    async def main() -> list[bool]:
        return list(
            await asyncio.gather(
                region.persisted_async(3, timeout=10),
                region.persisted_async(2, timeout=10),
                region.persisted_async(4, timeout=1.5),
            )
        )

    try:
        assert asyncio.run(main()) == [True, True, False]
    finally:
        os.waitpid(pid, 0)
    assert helper_thread_exits()


def helper_thread_exits(within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while any(t.name == "shmsnap-persisted" for t in threading.enumerate()):
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_a_cancelled_persisted_async_leaves_no_thread_behind(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)

    async def main() -> None:
        task = asyncio.ensure_future(region.persisted_async(1))
        await asyncio.sleep(0.05)
        assert any(t.name == "shmsnap-persisted" for t in threading.enumerate())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # Woken by the cancellation, not by the end of its one-second sleep.
    assert helper_thread_exits(within=0.5)


def test_wait_replicated_needs_the_replica_seq_not_the_local_one(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    # Durable locally up to seq 5, nothing in the replica (a host without --replica).
    set_word(shm, STATUS_GEN, 2)
    set_word(shm, STATUS_SEQ, 5)
    s = region.persisted()
    assert s.covers(5) and s.replicated(0) and not s.replicated(1)
    assert region.wait_persisted(5, timeout=0)
    assert region.wait_replicated(0, timeout=0)
    assert region.wait_replicated(3, timeout=0.1) is False
    set_word(shm, REPLICA_SEQ, 3)
    assert region.persisted() == shmsnap.Status(5, 2, 3)
    assert region.wait_replicated(3, timeout=0) and not region.wait_replicated(4, timeout=0)
    with pytest.raises(ValueError):
        region.wait_replicated(1, timeout=-1)


def fake_uploader_publishes(shm: mmap.mmap, delay: float, local: int, replica: int) -> int:
    """A forked process that, after `delay`, publishes local snapshots up to `local` with the
    replica still at 0, then (after `delay` again) the replica seq `replica`, bumping the wake
    counter each time (it wakes no futex: waiters find it at their next re-check)."""
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(delay)
            set_word(shm, STATUS_GEN, 1)
            set_word(shm, STATUS_SEQ, local)
            set_word(shm, STATUS_WAKE, word(shm, STATUS_WAKE) + 1)
            time.sleep(delay)
            set_word(shm, REPLICA_SEQ, replica)
            set_word(shm, STATUS_WAKE, word(shm, STATUS_WAKE) + 1)
        finally:
            os._exit(0)
    return pid


def test_wait_replicated_returns_once_the_uploader_publishes(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    pid = fake_uploader_publishes(shm, 0.2, 9, 3)
    try:
        assert region.wait_replicated(3, timeout=10)
        assert region.persisted().replica_seq == 3
        # Durable locally up to 9, not replicated beyond 3.
        assert region.wait_replicated(4, timeout=0.1) is False
    finally:
        os.waitpid(pid, 0)


def test_replicated_async_completes_when_the_uploader_publishes(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    pid = fake_uploader_publishes(shm, 0.2, 9, 3)

    async def main() -> list[bool]:
        at_once = await region.replicated_async(0)
        return [at_once] + list(
            await asyncio.gather(
                region.replicated_async(3, timeout=10),
                region.persisted_async(9, timeout=10),
                # Durable locally (seq 9 covers it), never replicated: must time out.
                region.replicated_async(4, timeout=2.5),
            )
        )

    try:
        assert asyncio.run(main()) == [True, True, True, False]
    finally:
        os.waitpid(pid, 0)
    assert helper_thread_exits()


# --- fork ----------------------------------------------------------------------------------


def in_child(fn: "object") -> int:
    """Runs fn() in a forked child; its exit status (0: fn returned True)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if fn() else 2  # type: ignore[operator]
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_forked_child_cannot_use_the_parents_objects(shm: mmap.mmap) -> None:
    region = shmsnap.Region.attach(shm)
    w = shmsnap.Writer(region, entries=8, data_size=1024)
    w.commit(b"parent")

    def child() -> bool:
        for act in (lambda: w.commit(b"child"), w.newest, region.persisted,
                    lambda: shmsnap.Writer(region)):
            try:
                act()
                return False
            except shmsnap.ForkedError:
                pass
        return True

    assert in_child(child) == 0
    assert w.newest() == b"parent" and w.commit(b"parent again") == 2


def test_a_childs_copy_of_an_open_grant_does_not_touch_the_parents_buffer(
    shm: mmap.mmap,
) -> None:
    c = shmsnap.TripleClient(shmsnap.Region.attach(shm), PAGE)
    g = c.write()
    g.write(b"parent's")
    state_word = 512 + 8 * (g.seq % 3)  # not relied on: every line is checked below
    before = [word(shm, 512 + 8 * i) for i in range(3)]
    assert any(v >> 62 == 1 for v in before), "one buffer is WRITING"

    def child() -> bool:
        nonlocal g, c
        del g, c
        gc.collect()  # the child's copies are freed: they must not store FREE
        return True

    assert in_child(child) == 0
    assert [word(shm, 512 + 8 * i) for i in range(3)] == before, state_word
    assert g.publish() == 1
    newest = c.read_newest()
    assert newest is not None and newest[:8] == b"parent's"
