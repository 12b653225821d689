//! The final snapshot after a client exit is on disk before the client is restarted (the exit
//! strategy copies the region raw: a restarted client writing during that copy would tear it).
//!
//! Each run of the client reads the generation of the state file before touching the region;
//! run N must see the final snapshot of run N-1, i.e. generation N-1. The region is 128 MiB
//! of non-zero bytes, so a final copy takes longer than the 100 ms restart pause: a host that
//! restarted without waiting for it would show run N an older generation.

mod common;

use common::*;

#[test]
fn each_restarted_client_finds_the_final_snapshot_of_its_predecessor_on_disk() {
    let dir = tempfile::Builder::new()
        .prefix("shmsnap-final-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("final.snap");
    let script = format!(
        r#"g=$({BIN} inspect --json {state} 2>/dev/null | tr -d ' \n' | sed -n 's/.*"generation":\([0-9]*\).*/\1/p')
n=$(head -c 1 /proc/self/fd/3 | od -An -tu1 | tr -d ' '); n=$((n+1))
[ $n -gt 1 ] || head -c 120M /dev/zero | tr '\000' '\001' | dd of=/proc/self/fd/3 bs=1M seek=8 conv=notrunc status=none
printf "\\$(printf %o $n)" 1<>/proc/self/fd/3
echo "run $n sees generation ${{g:-0}}"; [ $n -ge 3 ]"#,
        state = state.display()
    );
    let mut h = run_host(
        &state,
        &["--size", "128M", "--restart", "on-failure"],
        &["/bin/sh", "-c", &script],
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    assert_eq!(
        h.out.all(),
        [
            "run 1 sees generation 0",
            "run 2 sees generation 1",
            "run 3 sees generation 2"
        ],
        "{}",
        h.err.text()
    );
    assert_eq!(generation(&inspect(&state).unwrap()), 3);
    assert_verifies(&state);
}
