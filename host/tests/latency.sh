#!/bin/sh
# Issue 10, item 4: SIGTERM→exit and client-death→restart latency of `shmsnap run` while a
# 256 MiB queue snapshot is in flight. Not run by `cargo test` (timings on a shared machine
# are figures, not assertions).
#
#   host/tests/latency.sh BIN [RUNS] [STATE_DIR]
#
# The client fills 240 MiB of the 256 MiB region with non-zero bytes (through fd 3), then
# execs `shmsnap example primes --pause 10ms`, which commits every millisecond: with
# `--interval 10ms` the host copies the whole region back to back. Each run starts a host on a
# fresh state file, waits for two persisted snapshots, then waits until a snapshot is surely in
# flight (`in_flight`) and SIGKILLs the client, timing until the host's next "client started"
# line; then again until one is in flight and SIGTERMs the host, timing until it exits.
# Also timed, from the host's log timestamps: how long until the host reacts (reaps the dead
# client: "exited with status"; forwards SIGTERM: "forwarding signal"). Prints one line per
# run and the medians.
set -eu
BIN=$1
RUNS=${2:-5}
DIR=$(mktemp -d "${3:-${TMPDIR:-/tmp}}/shmsnap-latency.XXXXXX")
trap '[ -n "${KEEP:-}" ] || rm -rf "$DIR"' EXIT
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# The log time (UTC, tracing's default format) of the last line matching PATTERN, in ms.
log_ms() { t=$(grep "$1" "$DIR/log" | tail -1 | cut -d' ' -f1); echo $(( $(date -d "$t" +%s%N) / 1000000 )); }
count() { grep -c "$1" "$DIR/log" 2>/dev/null || true; }
wait_for() { # PATTERN N: until the log has N lines matching PATTERN (60 s at most)
    i=0
    while [ "$(count "$1")" -lt "$2" ]; do
        i=$((i + 1)); [ $i -lt 60000 ] || { echo "timeout waiting for $1" >&2; cat "$DIR/log" >&2; exit 1; }
        sleep 0.001
    done
}
CLIENT="[ -e $DIR/filled ] || { head -c 240M /dev/zero | tr '\\000' '\\001' | dd of=/proc/self/fd/3 bs=1M seek=16 conv=notrunc status=none; touch $DIR/filled; }; exec $BIN example primes --pause 10ms"
start_host() {
    rm -f "$DIR"/s.snap* "$DIR/filled"
    RUST_LOG=info "$BIN" run --state "$DIR/s.snap" --strategy queue --interval 10ms \
        --size 256M -- /bin/sh -c "$CLIENT" >/dev/null 2>"$DIR/log" &
    HOST=$!
    wait_for "snapshot persisted" 2
}
# Waits for the next persisted snapshot, then 50 ms: the following snapshot starts 10 ms after
# that line and copies for far longer than 40 ms, so it is in flight when this returns.
in_flight() {
    wait_for "snapshot persisted" "$(( $(count "snapshot persisted") + 1 ))"
    sleep 0.05
}
term_ms=""; restart_ms=""; reap_ms=""; fwd_ms=""
for r in $(seq "$RUNS"); do
    start_host
    in_flight
    pid=$(sed -n 's/.*client started (pid \([0-9]*\)).*/\1/p' "$DIR/log" | head -1)
    t0=$(now_ms); kill -KILL "$pid"; wait_for "client started" 2; t1=$(now_ms)
    restart_ms="$restart_ms $((t1 - t0))"; reap_ms="$reap_ms $(( $(log_ms 'exited with status') - t0 ))"
    wait_for "snapshot persisted" "$(( $(count "snapshot persisted") + 2 ))"
    in_flight
    t0=$(now_ms); kill -TERM "$HOST"; wait "$HOST" || true; t1=$(now_ms)
    term_ms="$term_ms $((t1 - t0))"; fwd_ms="$fwd_ms $(( $(log_ms 'forwarding signal') - t0 ))"
    echo "run $r: client SIGKILL -> reaped ${reap_ms##* } ms, restarted ${restart_ms##* } ms; host SIGTERM -> forwarded ${fwd_ms##* } ms, exit ${term_ms##* } ms"
done
median() { echo "$@" | tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo "median of $RUNS: client SIGKILL -> reaped $(median $reap_ms) ms, restarted $(median $restart_ms) ms; host SIGTERM -> forwarded $(median $fwd_ms) ms, exit $(median $term_ms) ms ($BIN)"
