"""Executors: how a node runs a plugin (``process`` by default, ``docker``, room for ``wasm``)."""

from hivebus.edge.executors.base import Executor, Limits, RunHandle, RunResult, RunSpec

__all__ = ["Executor", "Limits", "RunHandle", "RunResult", "RunSpec"]
