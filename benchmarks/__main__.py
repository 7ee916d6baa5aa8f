"""``python -m benchmarks [--quick]``: run every benchmark, write JSON and markdown."""

from benchmarks.run import main

main()
