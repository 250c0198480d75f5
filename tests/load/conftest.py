"""The load tests start their processes as the edge fault tests do."""

from tests.faults_edge.conftest import processes

__all__ = ["processes"]
