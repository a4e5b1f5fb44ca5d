"""Benchmarks of memae_fused (pytest bench/); see bench/results/README.md."""
