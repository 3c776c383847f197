"""Experiments: the benchmark runner behind ``fedmrg bench`` (methods registry, runs of every
method and seed, summary, claims, tables and plots)."""
