"""Absurd requests are refused at the API with INVALID_ARGUMENT and a message naming the field,
before the domain sees them; sound ones go through. In process: the real servicer on a real
grpc.aio server on 127.0.0.1, over a domain that answers every call NOT_FOUND ("reached")."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from cli.client import CoordinatorClient
from crctl.errors import ConfigError, NotFoundError
from crctl.v1 import coordinator_pb2 as pb
from crctl.v1 import coordinator_pb2_grpc
from tests.unit.api_harness import call_api

REACHED = "reached the domain"
LONG = 10_001  # one entry more than a list may hold


def _reached(*args: Any, **kwargs: Any) -> Any:
    raise NotFoundError(REACHED)


async def _reached_async(*args: Any, **kwargs: Any) -> Any:
    raise NotFoundError(REACHED)


DOMAIN = SimpleNamespace(
    jobs=SimpleNamespace(
        launch=_reached_async, get=_reached, kill=_reached_async, find=lambda job: None
    ),
    checkpoints=SimpleNamespace(start=_reached, list=_reached),
    restarts=SimpleNamespace(start=_reached),
    agents=list,
)


def answer(method: str, request: Message) -> tuple[grpc.StatusCode, str]:
    """The status and message of calling ``method`` with ``request``."""

    def call(address: str) -> tuple[grpc.StatusCode, str]:
        with grpc.insecure_channel(address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            try:
                reply = getattr(stub, method)(request, timeout=10)
                if method in ("Checkpoint", "Restart"):
                    list(reply)
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""
        raise AssertionError(f"{method} succeeded")

    return call_api(DOMAIN, call)


def launch(**fields: Any) -> pb.LaunchRequest:
    return pb.LaunchRequest(
        **{"job": "ring", "host": "h1", "rank": -1, "argv": ["sleep"], **fields}
    )


def checkpoint(**fields: Any) -> pb.CheckpointRequest:
    return pb.CheckpointRequest(**{"job": "ring", **fields})


def restart(**fields: Any) -> pb.RestartRequest:
    return pb.RestartRequest(**{"job": "ring", **fields})


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [
        ("Launch", launch(rank=-5), "rank -5 is out of range: give 0 to 1000000"),
        ("Launch", launch(rank=1_000_001), "rank 1000001 is out of range"),
        ("Launch", launch(argv=[]), "argv is empty"),
        ("Launch", launch(argv=["sleep"] * LONG), "argv has 10001 entries: at most 10000"),
        ("Launch", launch(argv=["sleep", "1\0"]), "argv[1] holds a NUL byte"),
        ("Launch", launch(env={"A=B": "1"}), "bad env name 'A=B'"),
        ("Launch", launch(env={"A\0": "1"}), "bad env name 'A\\x00'"),
        ("Launch", launch(env={"": "1"}), "bad env name ''"),
        ("Launch", launch(env={"A": "1\0"}), "env A holds a NUL byte"),
        ("Launch", launch(env={f"V{i}": "" for i in range(LONG)}), "env has 10001 entries"),
        ("Launch", launch(job="no spaces"), "bad job name 'no spaces'"),
        ("Launch", launch(job=""), "bad job name ''"),
        ("Launch", launch(host=""), "bad host name '' in host"),
        ("Checkpoint", checkpoint(timeout_seconds=-1), "timeout_seconds -1.0 is out of range"),
        ("Checkpoint", checkpoint(timeout_seconds=float("nan")), "timeout_seconds nan"),
        ("Checkpoint", checkpoint(timeout_seconds=float("inf")), "timeout_seconds inf"),
        ("Checkpoint", checkpoint(timeout_seconds=1e9), "give 0 to 86400 seconds"),
        ("Checkpoint", checkpoint(external="keep"), "bad external-connection policy 'keep'"),
        ("Checkpoint", checkpoint(job="../etc"), "bad job name '../etc'"),
        ("Restart", restart(timeout_seconds=-0.5), "timeout_seconds -0.5 is out of range"),
        ("Restart", restart(hosts=["h1"] * LONG), "hosts has 10001 entries"),
        ("Restart", restart(hosts=["h1", ""]), "bad host name '' in hosts"),
        ("Restart", restart(host_map={"h1": ""}), "bad host name '' in host_map"),
        (
            "Restart",
            restart(plugins=["mod.Class"]),
            "bad plugin 'mod.Class': expected module:Class",
        ),
        ("Restart", restart(plugins=["m:C"] * LONG), "plugins has 10001 entries"),
        ("Restart", restart(plugin_options={"": "x"}), "plugin_options has an option with no name"),
        ("Restart", restart(job="-x"), "bad job name '-x'"),
        ("GetJob", pb.GetJobRequest(job="a/b"), "bad job name 'a/b'"),
        ("KillJob", pb.KillJobRequest(job=""), "bad job name ''"),
        ("ListCheckpoints", pb.ListCheckpointsRequest(job="x" * 65), "bad job name"),
    ],
)
def test_an_absurd_request_is_refused_before_the_domain_with_the_reason(
    method: str, request_: Message, message: str
) -> None:
    code, details = answer(method, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("Launch", launch(rank=-1, env={"A": "x=y"})),
        ("Launch", launch(rank=0, argv=["sh", "-c", ""] * 3)),
        ("Launch", launch(rank=1_000_000)),
        ("Checkpoint", checkpoint(timeout_seconds=0, external="")),
        ("Checkpoint", checkpoint(timeout_seconds=0.001, external="close")),
        ("Restart", restart(host_map={"h1": "h4"}, plugins=["m:C"], plugin_options={"k": ""})),
        ("Restart", restart(hosts=["h4", "h5"], timeout_seconds=86_400)),
        ("GetJob", pb.GetJobRequest(job="ring-2.a_b")),
    ],
)
def test_a_sound_request_reaches_the_domain(method: str, request_: Message) -> None:
    assert answer(method, request_) == (grpc.StatusCode.NOT_FOUND, REACHED)


def test_the_client_raises_the_refusal_as_a_config_error() -> None:
    def call(address: str) -> None:
        with CoordinatorClient(address) as client:
            client.launch("ring", "h1", -5, ["sleep"], {})

    with pytest.raises(ConfigError, match="rank -5 is out of range"):
        call_api(DOMAIN, call)
