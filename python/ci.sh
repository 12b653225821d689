#!/usr/bin/env bash
# CI of the Python package (called by .ci/run; runs alone too: bash python/ci.sh).
#
# 1. A fresh virtual environment under target/ with maturin, pytest and mypy (and NumPy, if it
#    installs within 3 minutes) from PyPI by name; the package installed with the README's
#    one command, `pip install ./python`.
# 2. pytest: API, hostile input, and the examples under the real host (target/release/shmsnap,
#    built if missing) with random SIGKILLs of client and host.
# 3. mypy --strict: the examples and the benchmark against the stubs the wheel installed; and
#    a wrong program must be rejected (the stubs have teeth).
# 4. abi3: the same wheel installed into every other CPython >= 3.9 found on the machine and
#    smoke-tested (it exercises the buffer-protocol declarations of src/pybuf.rs).
#
# Environment: PYTHON (default python3), SHMSNAP_PY_KILLS (kill cycles, default 30),
# SHMSNAP_PY_SEED (replay a seed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/python-ci/venv"
wheels="$target/python-ci/wheels"
python="${PYTHON:-python3}"
start=$(date +%s)
step() { echo; echo "--- python: $* ($(( $(date +%s) - start ))s)"; }

step "fresh venv ($("$python" --version))"
rm -rf "$target/python-ci"
mkdir -p "$wheels"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install maturin pytest mypy
if timeout 180 "${pip[@]}" install --only-binary=:all: numpy; then
    echo "numpy $("$venv/bin/python" -c 'import numpy; print(numpy.__version__)')"
elif [ -n "${CI:-}" ]; then
    # Under CI the NumPy tests must run: a skipped test is not a passed one.
    echo "numpy could not be installed, and CI is set"; exit 1
else
    echo "numpy not installed: the NumPy tests and example are skipped (pytest lists them)"
fi

step "pip install ./python (the README's command)"
(cd "$root" && "${pip[@]}" install ./python)
# From the venv, not python/: there `import shmsnap` would find the source package.
(cd "$venv" && "$venv/bin/python" -c "import shmsnap; help(shmsnap)") > "$target/python-ci/help.txt"
head -3 "$target/python-ci/help.txt"; echo "... ($(wc -l < "$target/python-ci/help.txt") lines of help)"

step "the host binary"
if [ ! -x "$target/release/shmsnap" ]; then
    (cd "$root" && cargo build --release -p shmsnap)
fi
export SHMSNAP_BIN="$target/release/shmsnap"

step "pytest"
# Run from the tests' folder with the venv's pytest (not `python -m pytest`, which would put
# the source tree's shmsnap/ on sys.path ahead of the installed package).
(cd "$here" && "$venv/bin/pytest" -p no:cacheprovider -q -rs tests)

step "mypy --strict (examples and bench, against the installed stubs)"
# From outside the source tree, so `import shmsnap` resolves to the installed package (its
# .pyi and py.typed), not to python/shmsnap/.
(cd "$venv" && "$venv/bin/mypy" --strict --config-file "$here/pyproject.toml" \
    --cache-dir "$target/python-ci/mypy-cache" "$here/examples" "$here/bench")
bad="$target/python-ci/wrong_usage.py"
cat > "$bad" <<'EOF'
import shmsnap
w = shmsnap.Writer(shmsnap.Region.from_host(), entries=64)
w.commit(42)
state: str = w.newest()
EOF
if out=$(cd "$venv" && "$venv/bin/mypy" --strict --cache-dir "$target/python-ci/mypy-cache" "$bad" 2>&1); then
    echo "mypy accepted a wrong program: the stubs check nothing"; echo "$out"; exit 1
fi
echo "$out" | grep -q 'Found 2 errors' || { echo "unexpected mypy output: $out"; exit 1; }
echo "a wrong program is rejected: $(echo "$out" | tail -1)"

step "abi3: the wheel on every other CPython >= 3.9 here"
(cd "$root" && "${pip[@]}" wheel --no-deps -w "$wheels" ./python)
wheel=$(ls "$wheels"/shmsnap-*-abi3-*.whl)
echo "$(basename "$wheel")"
tried=0
for py in $(ls -d "$HOME"/.pyenv/versions/3.*/bin/python3 /usr/bin/python3.[0-9]* 2>/dev/null | sort -u); do
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
    "$py" -c 'import sys; sys.exit(not (3, 9) <= sys.version_info[:2])' || continue
    [ "$ver" = "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ] && continue
    env="$target/python-ci/venv-$ver"
    [ -d "$env" ] && continue
    "$py" -m venv "$env" && "$env/bin/python" -m pip --disable-pip-version-check -q install "$wheel"
    (cd "$env" && "$env/bin/python" -) <<'EOF'
import array, mmap, sys
import shmsnap
m = mmap.mmap(-1, 1 << 20)
r = shmsnap.Region.attach(m)
with shmsnap.Writer(r, entries=8, data_size=4096) as w:
    for p in (b"bytes", bytearray(b"ba"), memoryview(b"mv"), array.array("i", [1, 2])):
        w.commit(p)
        assert w.newest() == bytes(p), p
m2 = bytearray(1 << 20)
c = shmsnap.TripleClient(shmsnap.Region.attach(m2), 4096)
with c.write() as buf:
    buf[:3] = array.array("b", [1, 2, 3])
out = bytearray(3)
assert c.read_newest_into(out) == 1 and out == b"\x01\x02\x03"
try:
    m2.extend(b"x")
    raise SystemExit("the region did not pin its buffer")
except BufferError:
    pass
import asyncio
assert asyncio.run(shmsnap.Region.attach(bytearray(8192)).persisted_async(0, timeout=1))
print("abi3 smoke: python %d.%d ok" % sys.version_info[:2])
EOF
    tried=$((tried + 1))
done
echo "abi3 wheel smoke-tested on $tried other CPython version(s)"

step "done"
