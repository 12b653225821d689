"""Hostile input: memory that is not a shmsnap region, regions damaged at random, and a
restored state that is not what the program wrote. Whatever the memory holds, the binding
raises a `shmsnap.Error` (or succeeds) — never a panic (`PanicException`), never a crash."""

from __future__ import annotations

import mmap
import os
import random
import struct
import sys
from pathlib import Path
from typing import Callable, List

import pytest

import shmsnap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import kv  # noqa: E402

PAGE = 4096
SEED = int(os.environ.get("SHMSNAP_PY_SEED", "0")) or random.randrange(1, 1 << 32)
ROUNDS = int(os.environ.get("SHMSNAP_PY_FUZZ", "300"))


def fresh(size: int = 64 * PAGE) -> mmap.mmap:
    return mmap.mmap(-1, size)


def test_random_memory_is_a_format_error_for_both_strategies() -> None:
    rng = random.Random(SEED)
    for _ in range(20):
        m = fresh()
        m[:] = rng.randbytes(len(m))
        region = shmsnap.Region.attach(m)
        with pytest.raises(shmsnap.FormatError, match="not a shmsnap region"):
            shmsnap.Writer(region)
        with pytest.raises(shmsnap.FormatError, match="not a shmsnap region"):
            shmsnap.TripleClient(region, PAGE)
        del region


@pytest.mark.parametrize("strategy", ["queue", "triple"])
def test_every_damaged_header_word_is_a_format_error(strategy: str) -> None:
    for w in range(12):  # magic .. checksum
        m = fresh()
        region = shmsnap.Region.attach(m)
        if strategy == "queue":
            shmsnap.Writer(region, entries=16, data_size=8192).commit(b"x")
        else:
            shmsnap.TripleClient(region, PAGE).publish(b"x")
        old = struct.unpack_from("<Q", m, 8 * w)[0]
        struct.pack_into("<Q", m, 8 * w, old ^ (1 << 3))
        with pytest.raises(shmsnap.FormatError):
            if strategy == "queue":
                shmsnap.Writer(region, entries=16, data_size=8192)
            else:
                shmsnap.TripleClient(region, PAGE)
        del region


def damage(rng: random.Random, m: mmap.mmap, limit: int) -> None:
    """Random writes over the first `limit` bytes, biased to the words a region reads."""
    for _ in range(rng.randrange(1, 40)):
        kind = rng.random()
        if kind < 0.4:  # a whole word: header hints, descriptors, state lines
            at = rng.randrange(16, min(limit, 3 * PAGE) // 8) * 8
            v = rng.choice([0, 1, 2**62, 2**63, 2**64 - 1, rng.getrandbits(64),
                            rng.getrandbits(12), (1 << 62) | rng.getrandbits(3),
                            (2 << 62) | rng.getrandbits(10), (3 << 62) | 1])
            struct.pack_into("<Q", m, at, v)
        else:  # bytes anywhere
            at = rng.randrange(128, limit)
            n = min(rng.randrange(1, 64), limit - at)
            m[at : at + n] = rng.randbytes(n)


def survive(steps: List[Callable[[], object]]) -> int:
    """Runs each step; a shmsnap.Error ends the list. Returns how many steps succeeded. A
    PanicException (a BaseException) or any other exception fails the test."""
    done = 0
    for step in steps:
        try:
            step()
        except shmsnap.Error:
            return done
        done += 1
    return done


def test_randomly_damaged_queue_regions_never_panic() -> None:
    rng = random.Random(SEED)
    worked = 0
    for _ in range(ROUNDS):
        m = fresh(16 * PAGE)
        region = shmsnap.Region.attach(m)
        with shmsnap.Writer(region, entries=8, data_size=4096) as w:
            for i in range(rng.randrange(0, 30)):
                w.commit(rng.randbytes(rng.randrange(1, 900)))
        damage(rng, m, 16 * PAGE)
        holder: List[shmsnap.Writer] = []
        worked += survive([
            lambda: holder.append(shmsnap.Writer(region, entries=8, data_size=4096)),
            lambda: holder[0].newest(),
            lambda: holder[0].newest_seq,
            lambda: holder[0].commit(rng.randbytes(rng.randrange(1, 4096))),
            lambda: holder[0].newest(),
            lambda: region.persisted(),
            lambda: region.wait_persisted(rng.getrandbits(64), timeout=0),
            lambda: region.request_snapshot(),
        ])
        holder.clear()
        del region
    print(f"seed {SEED}: {ROUNDS} damaged queue regions, {worked} steps succeeded")
    assert worked > ROUNDS, "the damage left nothing usable: the test would not test reads"


def test_randomly_damaged_triple_regions_never_panic() -> None:
    rng = random.Random(SEED + 1)
    worked = 0
    for _ in range(ROUNDS):
        m = fresh(8 * PAGE)
        region = shmsnap.Region.attach(m)
        with shmsnap.TripleClient(region, PAGE, buffers=4) as c:
            for i in range(rng.randrange(0, 10)):
                c.publish(rng.randbytes(rng.randrange(1, PAGE)))
        damage(rng, m, 8 * PAGE)
        holder: List[shmsnap.TripleClient] = []

        def write() -> None:
            with holder[0].write() as buf:
                buf[:8] = b"8 bytes!"

        worked += survive([
            lambda: holder.append(shmsnap.TripleClient(region, PAGE, buffers=4)),
            lambda: holder[0].read_newest(),
            lambda: holder[0].read_newest_into(bytearray(100)),
            write,
            lambda: holder[0].read_newest(),
            lambda: holder[0].publish(b"y" * PAGE),
        ])
        holder.clear()
        del region
    print(f"seed {SEED}: {ROUNDS} damaged triple regions, {worked} steps succeeded")
    assert worked > ROUNDS


# --- a restored state that is not what the program wrote -----------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe not utf-8",
        b'{"ops": 3, "data": {',
        b"[1, 2, 3]",
        b'{"ops": -1, "data": {}}',
        b'{"ops": true, "data": {}}',
        b'{"ops": 3, "data": []}',
        b'{"ops": 3, "data": {"0": 0, "7919": 1}}',
        b'{"ops": 2, "data": {"0": 0, "419": 1}, "extra": 1}',
        b'{"ops": 100000000000000000000000000000, "data": {}}',
        b'{"ops": 2, "data": {"0": 0, "419": 2}}',
    ],
)
def test_the_kv_example_rejects_states_it_did_not_write(payload: bytes) -> None:
    with pytest.raises(kv.Corrupt):
        kv.load(payload)


def test_the_kv_example_accepts_exactly_its_own_states() -> None:
    assert kv.load(None) == (0, {})
    for ops in (0, 1, 499, 500, 501, 12345):
        assert kv.load(kv.encode(ops, kv.expected(ops))) == (ops, kv.expected(ops))


def test_a_payload_changed_in_the_region_reads_back_changed_and_is_caught() -> None:
    """The binding returns what the region holds (a restore of another state, a bit flip):
    it is the program's check that catches a state it did not write."""
    m = fresh(2 * (kv.DATA_SIZE + 64 * PAGE))
    region = shmsnap.Region.attach(m)
    w = shmsnap.Writer(region, entries=kv.ENTRIES, data_size=kv.DATA_SIZE)
    good = kv.encode(600, kv.expected(600))
    w.commit(good)
    w.close()
    at = m.find(good)
    assert at > 0
    m[at + len(good) // 2] ^= 0x01  # one bit, in the middle of the newest payload
    w = shmsnap.Writer(region, entries=kv.ENTRIES, data_size=kv.DATA_SIZE)
    raw = w.newest()
    assert raw is not None and raw != good
    with pytest.raises(kv.Corrupt):
        kv.load(raw)
