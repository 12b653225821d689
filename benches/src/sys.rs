//! The OS pieces the benchmarks use, all from `shmsnap-linux` (the same code the host runs).

pub use shmsnap_linux::copy::{copy_sparse, CopyStats};
pub use shmsnap_linux::persist::{PersistStats, Persister};
pub use shmsnap_linux::snapshot::{image_crc32c, restore_into, verify, SnapshotMeta};
pub use shmsnap_linux::{Mapping, Memfd, Protection};
