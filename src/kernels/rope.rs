//! (being written: see src/kernels/mod.rs)
