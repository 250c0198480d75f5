"""Projections: the log folded into DuckDB views, and SQL over them.

- ``views/``: one module per view (DDL, version, pure apply);
- ``store``: the DuckDB file (atomic batches with their checkpoints);
- ``pump`` / ``runner``: the projector process (``Projector(settings, bus, db_path).run(stop)``);
- ``guard`` / ``query`` / ``service``: the read-only ``hivebus.query`` service;
- ``client``: ``await query(bus, sql, ...) -> QueryResult`` for other processes.
"""
