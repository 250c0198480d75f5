"""``Catalog.may_read``: the ECR's read rule for a viewer, the one the read API filters apps by."""

from __future__ import annotations

from hivebus.handlers.testing import app_spec
from hivebus.schemas.auth import GroupMemberAdded, RoleGranted
from tests.unit.test_ecr import BME, ecr_log, grant

OTHER = "waggle/plugin-other:1.0.0"


def test_anonymous_reads_public_bundles_only_and_users_what_the_ecr_lets_them() -> None:
    log = ecr_log()
    log.push(app_spec(BME))
    log.push(app_spec(OTHER))
    catalog = log.state("ecr")
    assert catalog.may_read("alice", BME)  # the owner
    assert not catalog.may_read(None, BME) and not catalog.may_read("bob", BME)

    log.by("admin", GroupMemberAdded(group="lab", user="dave", by="admin"), "lab")
    log.by("admin", RoleGranted(user="rita", role="reviewer", by="admin"), "rita")
    grant(log, "alice", BME, "lab", "READ", kind="group")
    catalog = log.state("ecr")
    assert catalog.may_read("dave", BME) and not catalog.may_read("dave", OTHER)  # a group grant on one bundle
    assert catalog.may_read("rita", OTHER)  # reviewers read everything
    assert not catalog.may_read(None, BME)  # a grant to a group is not public

    grant(log, "alice", "waggle", "AllUsers", "READ", kind="group")  # the namespace: every bundle in it
    catalog = log.state("ecr")
    assert catalog.may_read(None, BME) and catalog.may_read(None, OTHER) and catalog.may_read("bob", OTHER)

