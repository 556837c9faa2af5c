"""Errors cross the gRPC API intact: each domain error becomes its status code and message, and
the client tells the coordinator's own "unavailable" answers apart from an unreachable
coordinator."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from cli.client import CoordinatorClient
from crctl.errors import ConflictError, CrctlError, NotFoundError, UnavailableError
from tests.unit.api_harness import call_api


class _Jobs:
    def __init__(self) -> None:
        self.error: CrctlError = NotFoundError("unknown job 'x'")

    def get(self, job: str) -> Any:
        raise self.error


def call_through_api(error: CrctlError) -> BaseException:
    """Serve a fake domain that raises ``error``; return what the real client raises."""
    jobs = _Jobs()
    jobs.error = error
    service = SimpleNamespace(jobs=jobs, agents=list)

    def client_call(address: str) -> BaseException:
        with CoordinatorClient(address) as client:
            try:
                client.job("x")
            except CrctlError as raised:
                return raised
        raise AssertionError("the call did not fail")

    return call_api(service, client_call)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (NotFoundError("unknown job 'x'"), NotFoundError),
        (ConflictError("a checkpoint of x is already running"), ConflictError),
        (UnavailableError("agent h1 did not answer launch_rank within 30.0s"), UnavailableError),
    ],
)
def test_domain_errors_reach_the_client_with_their_kind_and_message(
    error: CrctlError, kind: type[CrctlError]
) -> None:
    raised = call_through_api(error)
    assert type(raised) is kind
    assert error.message in str(raised)
    assert "coordinator unreachable" not in str(raised)


def test_an_unreachable_coordinator_is_reported_as_such() -> None:
    with (
        CoordinatorClient("127.0.0.1:1", timeout=2) as client,
        pytest.raises(UnavailableError, match=r"coordinator unreachable at 127\.0\.0\.1:1"),
    ):
        client.jobs()
