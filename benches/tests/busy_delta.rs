//! The pre/post argument of an incremental snapshot under real write tracking: a client
//! thread commits while the host takes deltas through `take_delta`; every kept entry of every
//! restored delta must hold exactly its committed bytes. See
//! `shmsnap_benches::incremental::busy_chain_check` and DESIGN §11, "Why an incremental image
//! is sound".
//!
//! It failed in 6 runs of 6 on the first wiring of `take_delta`, which scanned *before*
//! reading `pre` (the simulator's `broken_twin_scan_before_pre_is_caught`): a commit whose
//! payload landed after the walk passed its pages was kept with the previous image's bytes.

use std::path::PathBuf;
use std::time::Duration;

use shmsnap_benches::incremental::busy_chain_check;

#[test]
fn busy_client_deltas_restore_every_kept_entry_exactly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/shmsnap-bench");
    std::fs::create_dir_all(&dir).expect("bench directory");
    let c = busy_chain_check(&dir, 40, Duration::from_micros(200)).expect("busy run");
    eprintln!("{c:?}");
    assert!(c.deltas > 0, "no delta was committed: {c:?}");
    assert!(c.violation.is_none(), "{c:?}");
}
