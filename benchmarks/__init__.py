"""Reproducible side-by-side benchmarks of synthehr against peers (see README.md)."""
