//! shmsnap: not yet implemented.
