"""``python -m compass`` is the ``compass`` command."""

from compass.cli.main import main

main()
