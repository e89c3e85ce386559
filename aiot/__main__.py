"""``python -m aiot`` is the ``aiot`` command."""

from aiot.cli import main

main()
