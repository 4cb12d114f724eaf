"""Layer 1 classifier benchmarks (``python -m ops.bench.classifier.<backend>``)."""
