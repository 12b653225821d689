"""Cost of ``Writer.commit`` from Python, in one run, as ratios (issue 24):

- ``commit`` of 64 B and 4 KiB against a PyO3 function that only copies the same bytes into
  the same kind of shared mapping (``Region._copy_reference``: a method call like
  ``commit``, the same argument handling, a ``memcpy`` and nothing else) — target: at most
  1.5x; and against the same function copying with the word stores a commit uses for its
  payload (``_copy_reference_words``), which isolates the protocol's own cost;
- ``commit`` against appending the same bytes to a Python list, so users can place the cost.

Each variant is timed as a plain Python loop of N calls (loop overhead included in all of
them), in R interleaved rounds; the table gives the median per-call time. Run it on a quiet
machine (it prints the load average)::

    python python/bench/commit.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time
from typing import Callable, Dict, List

import shmsnap

MIB = 1 << 20


def shared(size: int) -> mmap.mmap:
    """`size` bytes of a memfd, mapped MAP_SHARED: the kind of mapping the host passes."""
    fd = os.memfd_create("shmsnap-bench")
    os.ftruncate(fd, size)
    m = mmap.mmap(fd, size)
    os.close(fd)
    return m


def per_call(fn: Callable[[bytes], object], payload: bytes, calls: int) -> float:
    """Seconds per call of `fn(payload)` over a loop of `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn(payload)
    return (time.perf_counter() - start) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()

    mem_commit, mem_copy = shared(8 * MIB), shared(8 * MIB)
    writer = shmsnap.Writer(shmsnap.Region.attach(mem_commit), entries=1024, data_size=4 * MIB)
    ref_region = shmsnap.Region.attach(mem_copy)
    copy, copy_words = ref_region._copy_reference, ref_region._copy_reference_words

    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, "
          f"{args.calls} calls x {args.rounds} rounds, median per call")
    print(f"{'payload':>8} {'commit':>8} {'memcpy ref':>10} {'ratio':>6} {'word ref':>9} "
          f"{'ratio':>6} {'list.append':>11} {'commit/append':>13}")
    for size in (64, 4096):
        payload = os.urandom(size)
        assert writer.commit(payload) > 0 and writer.newest() == payload  # sanity
        assert copy(payload) == size and copy_words(payload) == size
        lst: List[bytes] = []
        append = lst.append

        times: Dict[str, List[float]] = {"commit": [], "copy": [], "words": [], "append": []}
        for _ in range(args.rounds):
            times["commit"].append(per_call(writer.commit, payload, args.calls))
            times["copy"].append(per_call(copy, payload, args.calls))
            times["words"].append(per_call(copy_words, payload, args.calls))
            times["append"].append(per_call(append, payload, args.calls))
            lst.clear()
        commit = statistics.median(times["commit"])
        ref = statistics.median(times["copy"])
        words = statistics.median(times["words"])
        app = statistics.median(times["append"])
        print(f"{size:>7}B {commit * 1e9:>6.0f}ns {ref * 1e9:>8.0f}ns {commit / ref:>6.2f} "
              f"{words * 1e9:>7.0f}ns {commit / words:>6.2f} {app * 1e9:>9.0f}ns "
              f"{commit / app:>13.2f}")


if __name__ == "__main__":
    main()
