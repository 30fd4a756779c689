//! Heavy integration tests, in a binary of their own: cargo runs test
//! binaries one after another, so their load (100,000 changes through the
//! bridge and the emulator) never starves the timed waits of `tests/it`.

#[path = "../it/support/mod.rs"]
#[allow(unused_macros, unused_imports)]
mod support;

mod backpressure;
