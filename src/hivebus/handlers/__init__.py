"""Pure decisions of the platform's handlers: ``(state, event) -> [events]``, state a fold.

- ``ecr``: register or reject pushes (every reason), police approvals and grants, record
  profiles from real runs (state: ``catalog.Catalog``);
- ``ses``: place jobs (``plan_job``; policies in ``placement``; fit in ``fit``), send goals,
  run the job lifecycle and success criteria (state: ``ses_state.SesState``);
- ``health``: node presence and confirmed sensor failures (state: ``health.HealthState``);
- ``runtime.Driver``: resumes a handler from the log with exactly-once effects.

Nothing here imports nats, duckdb or subprocess; ``hivebus.services`` does the I/O.
"""

from hivebus.handlers.base import Decision, Handler, Outputs
from hivebus.handlers.catalog import Catalog
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.health import HealthHandler, HealthState
from hivebus.handlers.placement import POLICIES, Candidate, PlacementPolicy
from hivebus.handlers.runtime import Driver, Step
from hivebus.handlers.ses import Plan, SesHandler, plan_job
from hivebus.handlers.ses_state import SesState

__all__ = [
    "POLICIES",
    "Candidate",
    "Catalog",
    "Decision",
    "Driver",
    "EcrHandler",
    "Handler",
    "HandlerConfig",
    "HealthHandler",
    "HealthState",
    "Outputs",
    "PlacementPolicy",
    "Plan",
    "SesHandler",
    "SesState",
    "Step",
    "plan_job",
]
