//! Benchmarks for the domain runtime.
