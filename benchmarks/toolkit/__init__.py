"""Benchmarks: toolkit."""
