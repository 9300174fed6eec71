"""Benchmarks: ``python -m bench <name>`` (or ``make bench-<name>``). Each prints its figures next to a
baseline measured in the same run and writes JSON to bench/results/<name>.json."""
