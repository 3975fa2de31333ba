"""Benchmarks of websocketspec against a raw websockets baseline (see README.md)."""
