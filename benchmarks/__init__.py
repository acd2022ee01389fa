"""Benchmarks: thin scripts over the `benchmarks.evaluation` package; results and their configs live here."""
