"""``python -m compass`` is the ``compass`` command."""

from compass.cli import main

main()
