//! shmsnap-linux: not yet implemented.
