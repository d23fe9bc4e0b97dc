"""``python -m headstart``: the same as the ``headstart`` command."""

from headstart.cli.app import main

main()
