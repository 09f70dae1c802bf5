//! Shared pieces of the benchmark programs: starting servers, sampling their memory, timing
//! operations and printing tables. Benchmarks print results; they never assert on timings.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod proc;
pub mod stats;
pub mod table;
