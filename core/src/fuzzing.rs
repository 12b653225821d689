//! Entry points for the fuzz targets (feature `model`), also replayed on stable by the test
//! suite. Each checks invariants, not just the absence of a crash.
