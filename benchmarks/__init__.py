"""Benchmarks: attention kernels, training step, generation (see RESULTS.md)."""
