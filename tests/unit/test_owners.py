"""Whom an agent runs a rank as: the order's owner, if this host knows the uid; never root for
a job whose owner is not root."""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

import pytest

from agent.owners import rank_environment, run_as_owner
from agent.plugin_runner import load_plugins, plugin_modules
from crctl.errors import ConfigError, PermissionDeniedError, PrerequisiteError
from crctl.plugins import PluginError
from crctl.v1 import control_pb2

NOBODY = pwd.getpwnam("nobody")


def order(
    uid: int, job_owner: int, cwd: str = "", env: dict[str, str] | None = None
) -> control_pb2.LaunchRank:
    return control_pb2.LaunchRank(
        job="j",
        rank=0,
        argv=["id"],
        env=env or {},
        owner=control_pb2.RankOwner(job_owner_uid=job_owner, uid=uid, gid=uid, groups=[], name="x"),
        cwd=cwd,
        umask=0o027,
    )


def test_a_root_rank_of_a_job_someone_else_owns_is_refused() -> None:
    with pytest.raises(
        PermissionDeniedError, match="would run as root, but the job belongs to uid 1234"
    ):
        run_as_owner(order(0, 1234), "h1")
    assert run_as_owner(order(0, 0), "h1").uid == 0


def test_an_owner_this_host_does_not_know_is_refused_naming_the_host() -> None:
    unknown = 4_000_000
    with pytest.raises(PrerequisiteError, match=f"h7 has no user with uid {unknown}"):
        run_as_owner(order(unknown, unknown), "h7")


def test_a_users_rank_gets_their_home_and_basic_environment_by_default() -> None:
    run_as = run_as_owner(order(NOBODY.pw_uid, NOBODY.pw_uid), "h1")
    assert (run_as.uid, run_as.cwd, run_as.umask) == (NOBODY.pw_uid, Path(NOBODY.pw_dir), 0o027)
    env = rank_environment(order(NOBODY.pw_uid, NOBODY.pw_uid), run_as)
    assert env["USER"] == "nobody" and env["HOME"] == NOBODY.pw_dir
    assert "/root" not in "".join(env.values())
    given = rank_environment(order(NOBODY.pw_uid, NOBODY.pw_uid, env={"A": "1"}), run_as)
    assert given == {"A": "1"}


def test_a_relative_working_directory_is_refused() -> None:
    with pytest.raises(ConfigError, match="not absolute"):
        run_as_owner(order(NOBODY.pw_uid, NOBODY.pw_uid, cwd="scratch"), "h1")


def test_named_plugins_load_only_from_the_plugin_dir(tmp_path: Path) -> None:
    (tmp_path / "site_plugin.py").write_text(
        "from crctl.plugins import RestartPlugin\nclass Site(RestartPlugin):\n    name = 'site'\n"
    )
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "not-a-module.py").write_text("")
    assert plugin_modules(tmp_path) == ["pkg", "site_plugin"]
    loaded = load_plugins(["site_plugin:Site"], tmp_path)
    assert "site" in [p.name for p in loaded]

    before = set(sys.modules)
    with pytest.raises(PluginError, match="json is not a module in"):
        load_plugins(["json:JSONDecoder"], tmp_path)
    with pytest.raises(PluginError, match="os is not a module in"):
        load_plugins(["os:system"], tmp_path)
    assert not {m for m in set(sys.modules) - before if "json" in m or m.endswith(".os")}
    assert plugin_modules(tmp_path / "missing") == []
    assert os.path.isdir(tmp_path)
