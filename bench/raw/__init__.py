"""The raw baselines: plain websockets servers with no framework."""
