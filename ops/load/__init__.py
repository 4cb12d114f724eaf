"""Sustained-load harness: ``python -m ops.load --clients 64 --duration 300 --stream-share 0.5``."""
