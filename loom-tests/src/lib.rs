//! shmsnap-loom-tests: not yet implemented.
