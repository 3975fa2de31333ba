"""The ``websocketspec`` command."""

from websocketspec.cli.main import main

__all__ = ["main"]
