"""A triple-buffer client publishing a NumPy array: a table of counters that survives
``kill -9`` under ``shmsnap run --strategy triple``.

    target/release/shmsnap run --state counters.snap --strategy triple --interval 200ms \\
        --size 1M -- python python/examples/triple_numpy.py --pause 0.001

The state is an ``int64`` array of ``CELLS`` counters; after step ``s`` cell ``i`` holds
``s * (i + 1)``, so a restored array is checked exactly. Each step computes the next array
and publishes it with ``with client.write() as buf: buf[:n] = array`` (published when the
block ends). At start the newest published array is read back with ``read_newest_into``.

Exit status: 0 when done (or when NumPy is not installed: it says so), 3 when the restored
state is wrong, 69 when not started by the host.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import shmsnap

CELLS = 4096
CORRUPT = 3


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="stop after N steps in total")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between steps")
    args = p.parse_args(argv)
    try:
        import numpy as np
    except ImportError:
        print("triple_numpy: NumPy is not installed; nothing to do", flush=True)
        return 0

    try:
        region = shmsnap.Region.from_host()
    except shmsnap.HostRegionError as e:
        print(f"triple_numpy: {e}", file=sys.stderr)
        return 69
    ramp = np.arange(1, CELLS + 1, dtype=np.int64)
    counters = np.zeros(CELLS, dtype=np.int64)
    client = shmsnap.TripleClient(region, counters.nbytes)

    # The newest published state (restored by the host), read into the array in place.
    seq = client.read_newest_into(counters)
    step = int(counters[0]) if seq is not None else 0
    if not np.array_equal(counters, step * ramp):
        bad = int(np.flatnonzero(counters != step * ramp)[0])
        print(f"triple_numpy: pid {os.getpid()} CORRUPT: step {step}, cell {bad} holds "
              f"{int(counters[bad])}", flush=True)
        return CORRUPT
    print(f"triple_numpy: pid {os.getpid()} restored step {step}, all correct", flush=True)

    while args.steps is None or step < args.steps:
        step += 1
        np.add(counters, ramp, out=counters)
        with client.write() as buf:  # published at the end of the block
            buf[: counters.nbytes] = counters
        if args.pause:
            time.sleep(args.pause)
    print(f"triple_numpy: done at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
