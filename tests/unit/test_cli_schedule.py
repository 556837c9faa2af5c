"""`crctl schedule`, `crctl status` and `crctl checkpoints --pin` against the real API over
the real scheduler and services (tests.unit.test_api_schedules's domain): what they print and
their exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cli.main import main
from tests.unit.api_harness import call_api
from tests.unit.test_api_schedules import JOB, domain


def crctl(service: Any, *args: str) -> int:
    with capture_logs():  # the coordinator's events, kept out of the CLI's output
        return call_api(service, lambda address: main([*args, "--api-address", address]))


def test_a_schedule_is_set_shown_in_status_and_switched_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = domain(tmp_path)
    assert crctl(service, "schedule", JOB, "--every", "1h30m", "--keep", "2") == 0
    out = capsys.readouterr().out
    assert out.startswith("ring: every 1h30m, keeping 2, leave-running; next ")
    assert crctl(service, "status", JOB) == 0
    assert "schedule: every 1h30m, keeping 2, leave-running; next " in capsys.readouterr().out
    assert crctl(service, "status", JOB, "--json") == 0
    schedule = json.loads(capsys.readouterr().out)["schedule"]
    assert (schedule["every_seconds"], schedule["keep"], schedule["stop"]) == (5400.0, 2, False)
    assert schedule["next_at"].endswith("Z")
    assert crctl(service, "schedule", JOB, "--every", "2s", "--stop") == 0
    assert "every 2s, keeping the coordinator's default, stop" in capsys.readouterr().out
    assert crctl(service, "schedule", JOB, "--off") == 0
    assert capsys.readouterr().out == "ring: no periodic checkpoints\n"
    assert crctl(service, "status", JOB, "--json") == 0
    assert "schedule" not in json.loads(capsys.readouterr().out)
    assert crctl(service, "status", JOB) == 0
    assert "schedule:" not in capsys.readouterr().out


def test_a_schedules_last_round_shows_in_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = domain(tmp_path)
    service.schedules.set(JOB, every_seconds=60.0, keep=0, stop=False)
    store = service.checkpoints._store
    store.schedule_outcome(JOB, at=service.clock.now(), outcome="committed", checkpoint="ckpt-1")
    assert crctl(service, "status", JOB) == 0
    assert "; last committed ckpt-1 at " in capsys.readouterr().out
    store.schedule_outcome(JOB, at=service.clock.now(), outcome="skipped: ring has no running rank")
    assert crctl(service, "status", JOB) == 0
    assert "; last skipped: ring has no running rank at " in capsys.readouterr().out


def test_off_with_keep_or_stop_is_refused_as_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crctl(domain(tmp_path), "schedule", JOB, "--off", "--keep", "3") == 2
    assert "--off switches the schedule off" in capsys.readouterr().err


def test_an_unknown_jobs_schedule_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crctl(domain(tmp_path), "schedule", "nope", "--every", "1m") == 4
    assert "unknown job 'nope'" in capsys.readouterr().err


def test_a_pinned_checkpoint_is_marked_in_the_list_and_unpinned_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = domain(tmp_path)
    assert crctl(service, "checkpoints", JOB, "--pin", "ckpt-1") == 0
    assert capsys.readouterr().out == "pinned ckpt-1 of ring: retention never removes it\n"
    assert crctl(service, "checkpoints", JOB) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["CHECKPOINT", "STATE", "LATEST", "PINNED"]
    assert row.split()[:4] == ["ckpt-1", "committed", "*", "*"]
    assert crctl(service, "checkpoints", JOB, "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["pinned"] is True
    assert crctl(service, "checkpoints", JOB, "--unpin", "ckpt-1") == 0
    assert "unpinned ckpt-1 of ring" in capsys.readouterr().out
    assert crctl(service, "checkpoints", JOB, "--pin", "ckpt-9") == 4
    assert "job ring has no checkpoint ckpt-9" in capsys.readouterr().err
