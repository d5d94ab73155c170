"""tokenscale benchmarks: ratios measured in one run, never timed assertions.

Run ``.venv/bin/python -m benchmarks.run --help``; docs/performance.md explains what each measures.
"""
