"""``profile_runs`` and ``profiles``: what real runs of a bundle cost, per hardware class.

``profile_runs`` holds one row per recorded run (``ecr.profile.recorded``; a run recorded twice
counts once). ``profiles`` is a SQL view over it, grouped by bundle x hardware (arch, gpu,
node class): run and failure counts and p50/p95/max of cpu seconds, peak memory, GPU use and
wall time. Percentiles are computed exactly from every run, and are independent of row order,
so a replay gives the same figures.
"""

from __future__ import annotations

from typing import ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, bigint, utc

RECORDED = "ecr.profile.recorded"


def _stats(column: str, alias: str) -> str:
    return (
        f"quantile_cont({column}, 0.5) AS {alias}_p50, "
        f"quantile_cont({column}, 0.95) AS {alias}_p95, "
        f"max({column}) AS {alias}_max"
    )


class ProfilesView(FoldView):
    name = "profiles"
    version = 1
    stream = EVENTS
    public = ("profile_runs", "profiles")
    scope_columns = ("run_id",)
    table: ClassVar[Table] = Table(
        "profile_runs",
        """CREATE TABLE {name} (
            bundle_id VARCHAR NOT NULL,
            arch VARCHAR NOT NULL,
            gpu VARCHAR,
            node_class VARCHAR,
            node VARCHAR NOT NULL,
            run_id VARCHAR NOT NULL,
            job_id VARCHAR,
            exit_state VARCHAR NOT NULL,
            exit_code BIGINT,
            cpu_seconds DOUBLE NOT NULL,
            max_rss_bytes BIGINT NOT NULL,
            gpu_percent DOUBLE,
            wall_seconds DOUBLE NOT NULL,
            recorded_at TIMESTAMP NOT NULL,
            seq BIGINT NOT NULL
        )""",
    )
    sql_views = (
        f"""CREATE OR REPLACE VIEW profiles AS
        SELECT bundle_id, arch, gpu, node_class,
               count(*) AS runs,
               count(*) FILTER (WHERE exit_state = 'failed') AS failures,
               {_stats("cpu_seconds", "cpu_seconds")},
               {_stats("max_rss_bytes", "mem_bytes")},
               {_stats("gpu_percent", "gpu_percent")},
               {_stats("wall_seconds", "wall_seconds")},
               min(recorded_at) AS first_run_at,
               max(recorded_at) AS last_run_at
        FROM profile_runs
        GROUP BY bundle_id, arch, gpu, node_class""",
    )

    def scope(self, item: Item) -> Scope | None:
        if item.event.type != RECORDED:
            return None
        return (item.event.data.run_id,)

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        if rows:
            return None  # this run is already recorded
        data = item.event.data
        return [
            {
                "bundle_id": data.bundle_id,
                "arch": data.hardware.arch,
                "gpu": data.hardware.gpu,
                "node_class": data.hardware.node_class,
                "node": data.node,
                "run_id": data.run_id,
                "job_id": data.job_id,
                "exit_state": data.exit_state,
                "exit_code": bigint(data.exit_code, "exit_code"),
                "cpu_seconds": data.cpu_seconds,
                "max_rss_bytes": data.max_rss_bytes,
                "gpu_percent": data.gpu_percent,
                "wall_seconds": data.wall_seconds,
                "recorded_at": utc(item.event.time),
                "seq": item.seq,
            }
        ]
