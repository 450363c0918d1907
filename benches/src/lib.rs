//! Shared helpers for airllama's criterion benchmarks (inputs with fixed seeds).
