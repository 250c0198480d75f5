"""The views: one module each (DDL, version, pure apply); ``all_views()`` lists them in order.

The table and column names are a public interface (users write SQL against them); they are
documented in docs/views.md. Bump a view's ``version`` whenever its DDL or its apply changes:
the projector then rebuilds that view from the log at start (blue/green).
"""

from __future__ import annotations

from hivebus.errors import SetupError
from hivebus.projections.views.assignments import AssignmentsView
from hivebus.projections.views.base import View
from hivebus.projections.views.bundle_permissions import BundlePermissionsView
from hivebus.projections.views.bundles import BundlesView
from hivebus.projections.views.dead_letters import DeadLettersView
from hivebus.projections.views.events import EventsView
from hivebus.projections.views.jobs import JobsView
from hivebus.projections.views.node_sensors import NodeSensorsView
from hivebus.projections.views.nodes import NodesView
from hivebus.projections.views.plugin_runs import PluginRunsView
from hivebus.projections.views.profiles import ProfilesView
from hivebus.projections.views.readings import ReadingsView
from hivebus.projections.views.rejections import RejectionsView
from hivebus.projections.views.storage import BucketPermissionsView as StoragePermissionsView
from hivebus.projections.views.storage import BucketsView, ObjectsView
from hivebus.projections.views.triggers import TriggersView

VIEW_CLASSES: tuple[type[View], ...] = (
    EventsView,
    BundlePermissionsView,
    BundlesView,
    ProfilesView,
    JobsView,
    AssignmentsView,
    NodesView,
    NodeSensorsView,
    PluginRunsView,
    ReadingsView,
    TriggersView,
    DeadLettersView,
    RejectionsView,
    BucketsView,
    ObjectsView,
    StoragePermissionsView,
)


def all_views() -> list[View]:
    """A fresh instance of every view, in the order their tables are created."""
    return [cls() for cls in VIEW_CLASSES]


def select_views(names: list[str] | None) -> list[View]:
    """The views named (all when ``names`` is empty); SetupError names an unknown one."""
    views = all_views()
    if not names:
        return views
    by_name = {v.name: v for v in views}
    for public in views:
        for alias in public.public:
            by_name.setdefault(alias, public)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SetupError(
            f"unknown view {', '.join(map(repr, unknown))}",
            hint=f"views: {', '.join(v.name for v in views)}",
        )
    chosen = {by_name[n].name for n in names}
    return [v for v in views if v.name in chosen]


__all__ = ["VIEW_CLASSES", "View", "all_views", "select_views"]
