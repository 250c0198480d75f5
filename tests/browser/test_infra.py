"""The browser fixtures themselves: skip or fail without a browser; a real page of hivebus web."""

from __future__ import annotations

import pytest

from tests.browser import conftest


def test_missing_chromium_skips_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv(conftest.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"/nonexistent/chromium is not installed .*apt-get install -y chromium"):
        conftest.need_browser()


def test_missing_chromium_fails_when_a_browser_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv(conftest.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="HIVEBUS_REQUIRE_BROWSER=1 but /nonexistent/chromium"):
        conftest.need_browser()
