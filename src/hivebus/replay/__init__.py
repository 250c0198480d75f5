"""Replay: build views from the log into a new DuckDB file (rebuilds, as-of snapshots).

``build.Build`` is the engine (the live projector's own pump into a fresh store); ``offline``
holds the commands that work without a running projector; the running projector swaps rebuilt
views in itself (``hivebus.projections.runner``). ``synthetic`` makes a realistic history for
tests, benchmarks and demos.
"""
