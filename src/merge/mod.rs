//! `peft merge`: fold adapters into a base checkpoint, streaming one tensor at a time.
