"""Benchmarks that print their figures with ratios against a baseline measured in the same run."""
