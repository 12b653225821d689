//! Example clients, written against the public client API only (`shmsnap-core` for the
//! protocol, `shmsnap-linux`'s [`ClientRegion`] for the region the host passes). Run them
//! under the host:
//!
//! ```text
//! shmsnap run --state primes.snap --strategy queue -- shmsnap example primes
//! shmsnap run --state kv.snap --strategy queue -- shmsnap example kv
//! shmsnap run --state life.snap --strategy triple -- shmsnap example life
//! ```

pub mod kv;
pub mod life;
pub mod pages;
pub mod primes;

use shmsnap_core::{AttachError, LayoutError};
use shmsnap_linux::ClientRegion;

use crate::exit::{Code, Failure};

/// The claim id of in-process test writers (unit tests of the host crate).
#[cfg(test)]
pub const TEST_CLIENT: shmsnap_core::ClaimId = match shmsnap_core::ClaimId::from_pid(1, 0x7e57) {
    Some(id) => id,
    None => panic!("pid 1 is nonzero"),
};

/// Finds the region passed by the host.
pub fn region() -> Result<ClientRegion, Failure> {
    ClientRegion::from_host().map_err(|e| {
        Failure::new(
            Code::Usage,
            format!("{e} (example clients expect to be started by `shmsnap run --strategy queue -- ...`)"),
        )
    })
}

/// The failure for a region the writer cannot attach to; a region too small for the
/// example's layout is a configuration problem (exit 78, as `--help` documents).
pub fn attach_failure(example: &str, e: AttachError) -> Failure {
    let code = match e {
        AttachError::Layout(LayoutError::TooSmall { .. }) => Code::Config,
        // Another process writes the region: not this client's bug, and it may go away.
        AttachError::Claimed { .. } => Code::TempFail,
        _ => Code::Software,
    };
    let hint = if code == Code::Config {
        "; pass a larger --size to `shmsnap run`"
    } else {
        ""
    };
    Failure::new(code, format!("{example}: cannot use the region: {e}{hint}"))
}
