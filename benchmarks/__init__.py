"""agentcomm's benchmark harness: run `python -m benchmarks` (or `make bench`); see README.md."""
