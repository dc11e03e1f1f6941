"""Peer implementations that the benchmarks measure slmkit against, written for the benchmarks."""
