"""Fault injection, crash and bad-input harnesses for the gateway (``python -m ops.faults``)."""
