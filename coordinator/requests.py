"""Checks on the API's requests before they reach the domain: a value no caller can mean (a
negative deadline, a rank out of range, an empty command, an environment name holding "=",
ten thousand hosts) is refused as a ConfigError (INVALID_ARGUMENT) naming the field. What only
the domain can judge (unknown jobs, hosts, checkpoints; clashes) is left to it."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

from coordinator.checkpoints import EXTERNAL_POLICIES
from coordinator.jobs import validate_job_name
from crctl.errors import ConfigError
from crctl.limits import (
    MAX_EVERY,
    MAX_ITEMS,
    MAX_KEEP,
    MAX_RANK,
    MAX_TIMEOUT,
    MIN_EVERY,
)
from crctl.v1 import coordinator_pb2


def check_job(job: str) -> None:
    """For the requests that name nothing but a job."""
    validate_job_name(job)


def check_launch(request: coordinator_pb2.LaunchRequest) -> None:
    validate_job_name(request.job)
    _names("host", [request.host])
    if request.rank != -1 and not 0 <= request.rank <= MAX_RANK:
        raise ConfigError(
            f"rank {request.rank} is out of range: give 0 to {MAX_RANK}, or -1 for the next free"
        )
    if not request.argv:
        raise ConfigError("argv is empty: give the rank's command")
    _count("argv", request.argv)
    for index, arg in enumerate(request.argv):
        if "\0" in arg:
            raise ConfigError(f"argv[{index}] holds a NUL byte")
    _count("env", request.env)
    for name, value in request.env.items():
        if not name or "=" in name or "\0" in name:
            raise ConfigError(f"bad env name {name!r}: a name is not empty and holds no '=' or NUL")
        if "\0" in value:
            raise ConfigError(f"env {name} holds a NUL byte")


def check_checkpoint(request: coordinator_pb2.CheckpointRequest) -> None:
    validate_job_name(request.job)
    _timeout(request.timeout_seconds)
    if request.external and request.external not in EXTERNAL_POLICIES:
        raise ConfigError(
            f"bad external-connection policy {request.external!r}: "
            f"use {' or '.join(EXTERNAL_POLICIES)}"
        )


def check_restart(request: coordinator_pb2.RestartRequest) -> None:
    validate_job_name(request.job)
    _timeout(request.timeout_seconds)
    _count("hosts", request.hosts)
    _names("hosts", request.hosts)
    _count("host_map", request.host_map)
    _names("host_map", [*request.host_map.keys(), *request.host_map.values()])
    _count("plugins", request.plugins)
    for spec in request.plugins:
        module, sep, name = spec.partition(":")
        if not (module and sep and name):
            raise ConfigError(f"bad plugin {spec!r}: expected module:Class")
    _count("plugin_options", request.plugin_options)
    if "" in request.plugin_options:
        raise ConfigError("plugin_options has an option with no name")


def check_schedule(request: coordinator_pb2.SetScheduleRequest) -> None:
    validate_job_name(request.job)
    every = request.every_seconds
    if not math.isfinite(every) or not (every == 0 or MIN_EVERY <= every <= MAX_EVERY):
        raise ConfigError(
            f"every_seconds {every} is out of range: give {MIN_EVERY:.0f} to {MAX_EVERY:.0f} "
            "seconds, or 0 to switch the schedule off"
        )
    if request.keep > MAX_KEEP:
        raise ConfigError(
            f"keep {request.keep} is out of range: give 0 to {MAX_KEEP} "
            "(0: the coordinator's retain_checkpoints)"
        )


def check_pin(request: coordinator_pb2.PinCheckpointRequest) -> None:
    validate_job_name(request.job)
    if not request.checkpoint or "\0" in request.checkpoint or len(request.checkpoint) > 200:
        raise ConfigError(
            f"bad checkpoint id {request.checkpoint!r}: give one `crctl checkpoints` lists"
        )


def _timeout(seconds: float) -> None:
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIMEOUT:
        raise ConfigError(
            f"timeout_seconds {seconds} is out of range: give 0 to {MAX_TIMEOUT:.0f} seconds "
            "(0: the coordinator's default)"
        )


def _count(field: str, items: Collection[object]) -> None:
    if len(items) > MAX_ITEMS:
        raise ConfigError(f"{field} has {len(items)} entries: at most {MAX_ITEMS} are taken")


def _names(field: str, names: Iterable[str]) -> None:
    for name in names:
        if not name or "\0" in name:
            raise ConfigError(f"bad host name {name!r} in {field}: empty, or holding a NUL byte")
