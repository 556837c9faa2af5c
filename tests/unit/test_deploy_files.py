"""The files in deploy/ a site installs: the example configuration loads, the units run the
command setup.sh installs, the Slurm example uses crctl run."""

from __future__ import annotations

from pathlib import Path

from crctl.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_example_configuration_is_valid() -> None:
    config = load_config(file=DEPLOY / "systemd" / "crctl.toml", env={})
    assert config.api_socket == Path("/run/crctl/api.sock")
    assert config.plugin_dir == Path("/etc/crctl/plugins")


def test_the_units_run_the_installed_crctl_with_the_configuration() -> None:
    for unit, command in (("crctl-coordinator", "coordinator"), ("crctl-agent", "agent")):
        text = (DEPLOY / "systemd" / f"{unit}.service").read_text()
        assert f"ExecStart=/usr/local/bin/crctl {command}" in text
        assert "Environment=CRCTL_CONFIG=/etc/crctl/crctl.toml" in text
    assert "KillMode=process" in (DEPLOY / "systemd" / "crctl-agent.service").read_text()


def test_the_slurm_example_requeues_and_runs_crctl_run() -> None:
    script = (DEPLOY / "slurm" / "example.sbatch").read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=B:USR1@" in script
    assert "exec /usr/local/bin/crctl run" in script
    assert (DEPLOY / "slurm" / "epilog.sh").stat().st_mode & 0o111
