"""Shared test set-up. The end-to-end tier needs root, CRIU and the emulated-host testbed: when a
prerequisite is missing the run fails with the reason (never a silent skip)."""

from __future__ import annotations

import pytest

from crctl.doctor import run_checks

_prerequisites_checked: list[str] | None = None


def _missing_prerequisites() -> list[str]:
    global _prerequisites_checked
    if _prerequisites_checked is None:
        _prerequisites_checked = [
            f"{c.name}: {c.detail} (fix: {c.fix})" for c in run_checks() if c.required and not c.ok
        ]
    return _prerequisites_checked


@pytest.fixture(autouse=True)
def _e2e_prerequisites(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("e2e") is None:
        return
    missing = _missing_prerequisites()
    if missing:
        pytest.fail("end-to-end prerequisites missing:\n  " + "\n  ".join(missing), pytrace=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)
