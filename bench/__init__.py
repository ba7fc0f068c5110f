"""Benchmarks of the Atlas server: ingest throughput and worker persistence, each against a raw baseline."""
