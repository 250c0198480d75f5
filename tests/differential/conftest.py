"""The real pywaggle 0.56.3 and sage-data-client 0.9.1 as oracles (test-only dependencies)."""

from __future__ import annotations

import pytest

pywaggle = pytest.importorskip("waggle.plugin", reason="pywaggle 0.56.3 (the oracle) is not installed")
sage_data_client = pytest.importorskip("sage_data_client", reason="sage-data-client 0.9.1 (the oracle) is not installed")
