"""Client classes copied verbatim from the websocketspec README, driven unmodified by the tests."""
