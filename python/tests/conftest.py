"""Shared fixtures: regions over fresh shared memory."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def shm() -> Iterator[mmap.mmap]:
    """1 MiB of shared memory (a memfd, mapped MAP_SHARED: page aligned)."""
    fd = os.memfd_create("shmsnap-test")
    os.ftruncate(fd, 1 << 20)
    m = mmap.mmap(fd, 1 << 20)
    os.close(fd)
    yield m
    try:
        m.close()
    except BufferError:
        pass  # a test kept a region alive: the mapping goes with the process
