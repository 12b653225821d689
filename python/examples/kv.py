"""A small key-value store that survives ``kill -9``: a ``dict``, serialised with ``json`` at
every commit, kept in a shmsnap queue region.

Run it under the host (the region arrives at fd 3)::

    cargo build --release -p shmsnap
    target/release/shmsnap run --state kv.snap --strategy queue --interval 200ms --size 2M \\
        -- python python/examples/kv.py --pause 0.001

Kill it, or the host, any way you like: the next start prints the state the host restored,
checked key by key. Operation ``i`` sets key ``str((i * 7919) % 500)`` to ``i``, so the whole
dict is a function of the operation count and the check is exact.

Options: ``--ops N`` stops after N operations in total, ``--pause S`` sleeps S seconds between
operations, ``--ack K`` acknowledges every K-th operation only once the host has made it
durable (``request_snapshot`` + ``wait_persisted``: ``kv: acknowledged OPS``), and
``--print-commits`` prints ``kv: committed OPS`` after every commit.

Exit status: 0 when done, 3 when the restored state is wrong (``kv: pid P CORRUPT: ...``),
69 when not started by the host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, Optional, Tuple

import shmsnap

KEYS = 500
#: Descriptors and payload bytes of the region's queue: one state is ~8 KiB of JSON, so the
#: ring holds ~120 states, far more than one snapshot copy of a 2 MiB region lets pass.
ENTRIES = 256
DATA_SIZE = 1 << 20
CORRUPT = 3


class Corrupt(Exception):
    """The restored state is not a state this program wrote."""


def key_of(op: int) -> str:
    return str((op % KEYS) * 7919 % KEYS)


def expected(ops: int) -> Dict[str, int]:
    """The dict after ``ops`` operations, in at most ``KEYS`` steps for any ``ops``: 7919 is
    coprime to 500, so the last 500 operations set every key ever set to its final value."""
    return {key_of(i): i for i in range(max(0, ops - KEYS), ops)}


def encode(ops: int, data: Dict[str, int]) -> bytes:
    return json.dumps({"ops": ops, "data": data}, separators=(",", ":")).encode()


def load(raw: Optional[bytes]) -> Tuple[int, Dict[str, int]]:
    """The (ops, dict) in a restored payload. The payload is untrusted input (whatever the
    region holds): anything but a state this program wrote raises ``Corrupt``."""
    if raw is None:
        return 0, {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise Corrupt(f"not JSON ({e})") from None
    if not isinstance(doc, dict) or set(doc) != {"ops", "data"}:
        raise Corrupt("not a state document")
    ops, data = doc["ops"], doc["data"]
    if not isinstance(ops, int) or isinstance(ops, bool) or ops < 0:
        raise Corrupt(f"bad op count {ops!r}")
    if not isinstance(data, dict):
        raise Corrupt("data is not a dict")
    want = expected(ops)
    if data != want:
        wrong = sorted(set(data.items()) ^ set(want.items()))[:3]
        raise Corrupt(f"{ops} ops, but the dict differs from the expected one: {wrong}")
    return ops, data


def acknowledge(region: shmsnap.Region, seq: int, ops: int) -> None:
    """Prints ``kv: acknowledged OPS`` once commit ``seq`` is durable (re-asking every 2 s:
    a starved or failed snapshot publishes nothing)."""
    while True:
        region.request_snapshot()
        if region.wait_persisted(seq, timeout=2.0):
            print(f"kv: acknowledged {ops} (seq {seq})", flush=True)
            return


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=None, help="stop after N operations in total")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between operations")
    p.add_argument("--ack", type=int, default=0, help="acknowledge every K-th op when durable")
    p.add_argument("--print-commits", action="store_true", help="print every commit")
    args = p.parse_args(argv)

    try:
        region = shmsnap.Region.from_host()
    except shmsnap.HostRegionError as e:
        print(f"kv: {e}", file=sys.stderr)
        return 69
    try:
        writer = shmsnap.Writer(region, entries=ENTRIES, data_size=DATA_SIZE)
        ops, data = load(writer.newest())
    except (Corrupt, shmsnap.FormatError, shmsnap.MismatchError) as e:
        print(f"kv: pid {os.getpid()} CORRUPT: {e}", flush=True)
        return CORRUPT
    print(f"kv: pid {os.getpid()} restored {ops} ops, all correct", flush=True)

    while args.ops is None or ops < args.ops:
        data[key_of(ops)] = ops
        ops += 1
        seq = writer.commit(encode(ops, data))  # wait-free; the host snapshots it
        if args.print_commits:
            print(f"kv: committed {ops}", flush=True)
        if args.ack and ops % args.ack == 0:
            acknowledge(region, seq, ops)
        if args.pause:
            time.sleep(args.pause)
    print(f"kv: done at {ops} ops", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
