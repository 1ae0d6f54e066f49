"""``python -m turnout``: the ``turnout`` command, for an environment whose scripts are not on
``PATH`` (a virtual environment not activated, a container's system Python)."""

from turnout.cli import main

main()
