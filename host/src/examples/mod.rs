//! Example clients, written against the public client API only (`shmsnap-core` for the
//! protocol, `shmsnap-linux::listen` to find the region). Run them under the host:
//!
//! ```text
//! shmsnap run --state primes.snap --strategy queue -- shmsnap example primes
//! shmsnap run --state kv.snap --strategy queue -- shmsnap example kv
//! shmsnap run --state life.snap --strategy triple -- shmsnap example life
//! ```

pub mod kv;
pub mod life;
pub mod primes;

use shmsnap_core::{AttachError, LayoutError};
use shmsnap_linux::listen::{open_client_region, DEFAULT_FD_NAME};
use shmsnap_linux::{Mapping, Memfd};

use crate::exit::{Code, Failure};

/// Finds the region passed by the host.
pub fn region() -> Result<(Memfd, Mapping), Failure> {
    open_client_region(DEFAULT_FD_NAME).map_err(|e| {
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
        _ => Code::Software,
    };
    let hint = if code == Code::Config {
        "; pass a larger --size to `shmsnap run`"
    } else {
        ""
    };
    Failure::new(code, format!("{example}: cannot use the region: {e}{hint}"))
}
