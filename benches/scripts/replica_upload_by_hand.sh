#!/usr/bin/env bash
# The replica upload of one 256 MiB base, timed through the real host binary (the host crate is
# binary-only, so `compare`'s "replica upload" row cannot call the uploader; this is its stand-in).
# Prints the host's "snapshot persisted" and "uploaded" lines: their timestamps' difference is
# the upload (open, HEAD, multipart PUT of 16 MiB parts, 2 in flight). Compare it with the raw
# multipart PUT of `compare --only replica` run just before, on the same machine.
#
# usage: benches/scripts/replica_upload_by_hand.sh [SHMSNAP_BIN] (s3s-fs from $SHMSNAP_S3S_FS or PATH)
set -u
B=${1:-target/release/shmsnap}
S3S=${SHMSNAP_S3S_FS:-s3s-fs}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
mkdir -p "$D/s3/bkt" "$D/state"
"$S3S" --host 127.0.0.1 --port 39125 --access-key K --secret-key S "$D/s3" >"$D/s3.log" 2>&1 &
S3=$!
sleep 1
export AWS_ACCESS_KEY_ID=K AWS_SECRET_ACCESS_KEY=S AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL=http://127.0.0.1:39125 AWS_ALLOW_HTTP=true RUST_LOG=info,shmsnap=debug
# The client fills the region (fd 3) with random bytes and exits 0: the exit strategy takes one
# full snapshot, the replica uploads it, the host exits.
"$B" run --strategy exit --size 256M --state "$D/state/s.snap" --replica s3://bkt/app \
    -- sh -c 'head -c 268435456 /dev/urandom >&3' >"$D/host.log" 2>&1
kill "$S3"
wait "$S3" 2>/dev/null
grep -E "snapshot persisted|uploaded" "$D/host.log" | cut -c1-120
