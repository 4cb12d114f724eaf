"""Operations: the fake upstream, the gateway process harness, benchmarks, load and fault tests."""
