"""Benchmarks (``depotwatch bench ...``): one module per benchmark, found by :mod:`.cli`."""
