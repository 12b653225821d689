"""The examples under the real host (`target/release/shmsnap`, built if missing), with random
SIGKILLs of client and host.

The kv torture (issue 24's "done means"): every restored state is checked by the client
itself (key by key: `CORRUPT` fails the test); after a client kill the restored op count is
at least the last commit the client printed before it died (0 lost per client kill: the host
snapshots the region after the client exits); after a host kill it is at least every op
acknowledged through `wait_persisted` (0 acknowledged lost). Half of the host kills are aimed
right after an acknowledgement. `SHMSNAP_PY_KILLS` cycles (default 30), `SHMSNAP_PY_SEED`
to replay.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from hostlib import Host, python_client, shmsnap_cmd, wait_dead

HOST_ARGS = ["--strategy", "queue", "--interval", "300ms", "--size", "2M", "--max-backoff", "200ms"]
RESTART = 60.0
# Searched, not matched: a killed client's last line may lack its end (a line is one
# `write`, but be robust), so the next line may be glued to it.
RESTORED = re.compile(r"kv: pid (\d+) restored (\d+) ops, all correct$")
NUMBER = re.compile(r"(\d+)")
COMMITTED = "kv: committed "
ACKED = "kv: acknowledged "


def kv_client(*args: str) -> List[str]:
    return python_client("kv.py", *args)


def next_restored(host: Host, start: int) -> Tuple[int, int, int]:
    """The next `restored` line at index >= start: (index, pid, ops); fails on CORRUPT."""
    found = host.out.wait_from(
        start, RESTART, lambda l: "CORRUPT" in l or RESTORED.search(l) is not None
    )
    assert found is not None, (
        f"no restart within {RESTART}s after line {start}; stdout begins:\n"
        + "\n".join(host.out.all()[:4])
        + "\nstdout lines not about commits:\n"
        + "\n".join([l for l in host.out.all() if "committed" not in l][-10:])
        + "\nstdout ends:\n"
        + "\n".join(host.out.all()[-15:])
        + "\nstderr about the client:\n"
        + "\n".join([l for l in host.err.all() if "client" in l and "request" not in l][-15:])
    )
    i, line = found
    assert "CORRUPT" not in line, f"the client found a wrong state: {line}"
    m = RESTORED.search(line)
    assert m is not None
    return i, int(m.group(1)), int(m.group(2))


def last_number(lines: List[str], prefix: str) -> int:
    """The largest N of the lines starting with `prefix` N (each printed after its act)."""
    best = 0
    for l in lines:
        if l.startswith(prefix):
            m = NUMBER.match(l, len(prefix))
            if m:
                best = max(best, int(m.group(1)))
    return best


def test_kv_survives_a_restart_and_stops_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "kv.snap"
    for total, restored in ((700, 0), (900, 700)):
        with Host(state, HOST_ARGS, kv_client("--ops", str(total))) as host:
            _, _, ops = next_restored(host, 0)
            assert ops == restored
            done = host.out.wait_from(0, RESTART, lambda l: l.startswith("kv: done"))
            assert done is not None and done[1] == f"kv: done at {total} ops"
            assert host.proc.wait(timeout=RESTART) == 0, host.err.text()[-2000:]
    check = shmsnap_cmd("verify", str(state))
    assert check.returncode == 0, check.stdout + check.stderr


def test_kv_under_random_kills_loses_nothing_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = int(os.environ.get("SHMSNAP_PY_KILLS", "30"))
    seed = int(os.environ.get("SHMSNAP_PY_SEED", "0")) or random.randrange(1, 1 << 32)
    rng = random.Random(seed)
    print(f"kv torture: {n} cycles, seed {seed} (SHMSNAP_PY_SEED to replay)")
    state = tmp_path / "kv.snap"
    client = kv_client("--pause", "0.001", "--ack", "40", "--print-commits")
    tally = dict(client_kills=0, host_kills=0, aimed=0, acked=0, lost=0, acked_lost=0,
                 restarts=0, naive_lost=0)
    corrupt_lines = 0
    started = time.monotonic()
    host = Host(state, HOST_ARGS, client)
    try:
        at, pid, _ = next_restored(host, 0)
        max_acked = 0
        for cycle in range(1, n + 1):
            kill_host = rng.randrange(3) == 0
            aimed = kill_host and rng.randrange(2) == 0
            if aimed:  # right after the next acknowledgement: the host just published
                host.out.wait_from(len(host.out), RESTART, lambda l: l.startswith(ACKED))
            else:
                time.sleep(rng.uniform(0.0, 0.4))
            if kill_host:
                host.kill()
                assert wait_dead(pid, 10), "the client outlived its host"
                corrupt_lines += sum("CORRUPT" in l for l in host.out.all())
                lines = host.out.all()[at:]
                committed = last_number(lines, COMMITTED)
                max_acked = max(max_acked, last_number(lines, ACKED))
                tally["acked"] += sum(l.startswith(ACKED) for l in lines)
                host = Host(state, HOST_ARGS, client)
                at, pid, ops = next_restored(host, 0)
                # A client acknowledging at commit time would have promised `committed`.
                tally["naive_lost"] += committed > ops
            else:
                os.kill(pid, signal.SIGKILL)
                assert wait_dead(pid, 10)
                i, pid2, ops = next_restored(host, at + 1)
                lines = host.out.all()[at:i]
                committed = last_number(lines, COMMITTED)
                max_acked = max(max_acked, last_number(lines, ACKED))
                tally["acked"] += sum(l.startswith(ACKED) for l in lines)
                at, pid = i, pid2
                if ops < committed:
                    tally["lost"] += 1
                assert ops >= committed, (
                    f"cycle {cycle}: client kill: restored {ops} ops, but {committed} were "
                    f"committed before the kill"
                )
            tally["restarts"] += 1
            if ops < max_acked:
                tally["acked_lost"] += 1
            assert ops >= max_acked, (
                f"cycle {cycle}: restored {ops} ops, but {max_acked} were acknowledged as durable"
            )
            kind = "host (aimed)" if aimed else "host" if kill_host else "client"
            tally["aimed" if aimed else "host_kills" if kill_host else "client_kills"] += 1
            print(f"cycle {cycle:3} {kind:12}: committed {committed:6}, acknowledged up to "
                  f"{max_acked:6}, restored {ops:6}")
    finally:
        host.kill()
        corrupt_lines += sum("CORRUPT" in l for l in host.out.all())
    check = shmsnap_cmd("verify", str(state))
    assert check.returncode == 0, check.stdout + check.stderr
    summary = (
        f"kv torture: {n} cycles: {tally['client_kills']} client kills, {tally['host_kills']} "
        f"host kills, {tally['aimed']} host kills right after an acknowledgement; "
        f"{tally['restarts']} restored states checked key by key, {corrupt_lines} torn or "
        f"wrong, {tally['lost']} lost per client kill; {tally['acked']} acknowledgements, "
        f"{tally['acked_lost']} acknowledged lost; acknowledging at commit time would have "
        f"lost work at {tally['naive_lost']} host kills; {time.monotonic() - started:.1f} s"
    )
    with capsys.disabled():
        print("\n" + summary)
    assert corrupt_lines == 0
    assert tally["acked"] > 0, "no acknowledgement was ever printed"
    assert tally["client_kills"] > 0


def test_a_state_the_program_did_not_write_is_reported_not_used(tmp_path: Path) -> None:
    """An impostor commits a well-formed but wrong document with kv's layout; the host
    snapshots and restores it, and kv refuses it (exit 3, `CORRUPT`)."""
    state = tmp_path / "kv.snap"
    impostor = (
        "import shmsnap, sys; sys.path.insert(0, %r); import kv; "
        "w = shmsnap.Writer(shmsnap.Region.attach if False else shmsnap.Region.from_host(), "
        "entries=kv.ENTRIES, data_size=kv.DATA_SIZE); "
        "w.commit(b'{\"ops\": 3, \"data\": {\"0\": 0}}')"
    ) % str(Path(python_client("kv.py")[-1]).parent)
    with Host(state, HOST_ARGS, [sys.executable, "-c", impostor]) as host:
        assert host.proc.wait(timeout=RESTART) == 0, host.err.text()[-2000:]
    with Host(state, HOST_ARGS, kv_client("--ops", "10")) as host:
        found = host.out.wait_from(0, RESTART, lambda l: "CORRUPT" in l or "restored" in l)
        assert found is not None, host.err.text()[-2000:]
        assert "CORRUPT" in found[1] and "differs from the expected" in found[1], found[1]
        exited = host.err.wait_from(0, RESTART, lambda l: "exited with status 3" in l)
        assert exited is not None, host.err.text()[-2000:]


def test_the_numpy_triple_client_restores_every_step_under_kills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("numpy")
    rng = random.Random(int(os.environ.get("SHMSNAP_PY_SEED", "0")) or None)
    state = tmp_path / "counters.snap"
    args = ["--strategy", "triple", "--interval", "100ms", "--size", "1M",
            "--max-backoff", "200ms"]
    client = python_client("triple_numpy.py", "--pause", "0.001")
    pattern = re.compile(r"triple_numpy: pid (\d+) restored step (\d+), all correct$")

    def restored(h: Host, start: int) -> Tuple[int, int, int]:
        found = h.out.wait_from(start, RESTART, lambda l: "CORRUPT" in l or bool(pattern.search(l)))
        assert found is not None, h.err.text()[-3000:]
        assert "CORRUPT" not in found[1], found[1]
        m = pattern.search(found[1])
        assert m is not None
        return found[0], int(m.group(1)), int(m.group(2))

    host = Host(state, args, client)
    try:
        at, pid, step = restored(host, 0)
        steps = [step]
        for _ in range(8):
            time.sleep(rng.uniform(0.1, 0.4))
            if rng.randrange(3) == 0:
                host.kill()
                assert wait_dead(pid, 10)
                host = Host(state, args, client)
                at, pid, step = restored(host, 0)
            else:
                os.kill(pid, signal.SIGKILL)
                at, pid, step = restored(host, at + 1)
            assert step >= steps[-1], f"restored step went back: {steps} then {step}"
            steps.append(step)
        assert steps[-1] > 0, "no step was ever restored"
        with capsys.disabled():
            print(f"\nnumpy triple: 8 kills, restored steps {steps}")
    finally:
        host.kill()
    assert wait_dead(pid, 10), "the client outlived its host"


ASYNC_CLIENT = """
import asyncio, json, sys, time
import shmsnap

async def main() -> None:
    region = shmsnap.Region.from_host()
    writer = shmsnap.Writer(region, entries=64, data_size=65536)
    for i in range(6):
        seq = writer.commit(json.dumps({"i": i}).encode())
        start = time.monotonic()
        region.request_snapshot()
        ok = await region.persisted_async(seq, timeout=30)
        print(f"async: seq {seq} durable={ok} after {time.monotonic() - start:.3f}s", flush=True)

asyncio.run(main())
"""


def test_persisted_async_is_woken_by_the_hosts_publish(tmp_path: Path) -> None:
    """An asyncio client acknowledges through `await persisted_async` under the real host,
    whose interval (30 s) is too long to matter: each answer comes from the prompt snapshot
    it requested and the host's futex wake after the publish, well within the helper
    thread's one-second sleep."""
    args = ["--strategy", "queue", "--interval", "30s", "--size", "1M"]
    with Host(tmp_path / "async.snap", args, [sys.executable, "-c", ASYNC_CLIENT]) as host:
        assert host.proc.wait(timeout=RESTART) == 0, host.err.text()[-3000:]
        host.out.ended.wait(5)
        lines = [l for l in host.out.all() if l.startswith("async:")]
    assert len(lines) == 6, host.out.text()
    assert all("durable=True" in l for l in lines), lines
    waits = sorted(float(l.rsplit(" ", 1)[1].rstrip("s")) for l in lines)
    print("persisted_async waits (s):", waits)
    assert waits[len(waits) // 2] < 0.5, f"not woken by the publish: {waits}"
