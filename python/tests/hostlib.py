"""Helpers for the tests that run the real host: the `shmsnap` binary as a process, its output
collected line by line by threads, killed and reaped whatever happens to the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Callable, List, Optional, Sequence, Tuple

PYTHON_DIR = Path(__file__).resolve().parent.parent
REPO = PYTHON_DIR.parent
EXAMPLES = PYTHON_DIR / "examples"


def host_binary() -> Path:
    """`target/release/shmsnap`, built if missing (`cargo build --release -p shmsnap`)."""
    env = os.environ.get("SHMSNAP_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "release" / "shmsnap"
    if not binary.exists():
        subprocess.run(
            ["cargo", "build", "--release", "-p", "shmsnap"], cwd=REPO, check=True
        )
    return binary


class Lines:
    """Lines of one stream, collected by a daemon thread."""

    def __init__(self, stream: IO[bytes], echo: str) -> None:
        self._lines: List[str] = []
        self._lock = threading.Lock()
        self.ended = threading.Event()
        self._echo = echo if os.environ.get("SHMSNAP_TEST_ECHO") else ""
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if self._echo:
                print(f"[{self._echo}] {line}", file=sys.stderr)
            with self._lock:
                self._lines.append(line)
        self.ended.set()

    def all(self) -> List[str]:
        with self._lock:
            return list(self._lines)

    def __len__(self) -> int:
        with self._lock:
            return len(self._lines)

    def text(self) -> str:
        return "\n".join(self.all())

    def wait_from(
        self, start: int, timeout: float, pred: Callable[[str], bool]
    ) -> Optional[Tuple[int, str]]:
        """The first line at index >= start satisfying pred, waiting up to timeout."""
        end = time.monotonic() + timeout
        while True:
            lines = self.all()
            for i in range(start, len(lines)):
                if pred(lines[i]):
                    return i, lines[i]
            if time.monotonic() >= end:
                return None
            time.sleep(0.005)


class Host:
    """`shmsnap run --state STATE ARGS -- CLIENT...`, started; SIGKILLed and reaped on close."""

    def __init__(self, state: Path, args: Sequence[str], client: Sequence[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
        env["RUST_LOG"] = env.get("RUST_LOG", "info")
        cmd = [str(host_binary()), "run", "--state", str(state), *args, "--", *client]
        # The host and its client run in the state's directory: from python/ (where pytest
        # runs), `python -c "import shmsnap"` would find the source package, which has no
        # compiled `_native`, instead of the installed wheel.
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=state.parent,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Lines(self.proc.stdout, "out")
        self.err = Lines(self.proc.stderr, "err")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.out.ended.wait(5)

    def stop(self) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def python_client(script: str, *args: str) -> List[str]:
    """The command line of an example run by this interpreter.

    Not `-u`: unbuffered, `print` writes a line and its newline in two `write`s, and a SIGKILL
    between them glues the next client's first line to a line without its end. The examples
    print with `flush=True`: one `write` per line."""
    return [sys.executable, str(EXAMPLES / script), *args]


def alive(pid: int) -> bool:
    """Whether pid is alive (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"


def wait_dead(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= end:
            return False
        time.sleep(0.005)
    return True


def shmsnap_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(host_binary()), *args], capture_output=True, text=True, timeout=60
    )
