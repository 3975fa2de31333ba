"""The benchmark scenarios."""
