"""The ``compass`` command line: ``main`` is the click group, one module per subcommand."""
