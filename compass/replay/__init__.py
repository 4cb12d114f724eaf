"""Offline evaluation of Layer 2: data-set replay with bandit feedback, and IPS on the gateway logs."""
