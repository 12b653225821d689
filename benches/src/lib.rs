//! shmsnap-benches: not yet implemented.
