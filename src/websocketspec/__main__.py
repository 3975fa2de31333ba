"""``python -m websocketspec``: the command line."""

from websocketspec.cli import main

main()
