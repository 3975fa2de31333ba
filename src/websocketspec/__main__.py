"""``python -m websocketspec``: the command line."""

from websocketspec.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
