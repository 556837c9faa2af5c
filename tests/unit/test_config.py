"""Configuration: defaults < file < environment < flags, with clear errors for bad input."""

from pathlib import Path

import pytest

from crctl.config import Config, load_config
from crctl.errors import ConfigError


def test_defaults_apply_when_nothing_is_given() -> None:
    config = load_config(env={}, flags={})
    assert config.heartbeat_interval == Config().heartbeat_interval
    assert config.api_socket == Path("/run/crctl/api.sock")
    assert config.client_address() == "unix:/run/crctl/api.sock"


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    file = tmp_path / "crctl.toml"
    file.write_text(
        'heartbeat_interval = 2.0\nagent_lost_after = 9.0\nhost = "from-file"\n'
        'state_db = "/tmp/file.db"\n'
    )
    env = {"CRCTL_AGENT_LOST_AFTER": "7.5", "CRCTL_HOST": "from-env"}
    flags = {"host": "from-flag"}

    config = load_config(file=file, env=env, flags=flags)

    assert config.heartbeat_interval == 2.0  # file over default
    assert config.agent_lost_after == 7.5  # env over file
    assert config.host == "from-flag"  # flag over env
    assert config.state_db == Path("/tmp/file.db")


def test_config_file_can_be_named_by_environment(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('api_address = "10.9.9.9:1"\n')
    assert load_config(env={"CRCTL_CONFIG": str(file)}).client_address() == "10.9.9.9:1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CRCTL_HEARTBEAT_INTERVAL": "soon"}, "bad value 'soon' for heartbeat_interval"),
        ({"CRCTL_AGENT_LOST_AFTER": "-1"}, "must be greater than 0"),
        ({"CRCTL_LOG_FORMAT": "xml"}, "log_format must be one of"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_an_optional_path_is_unset_by_default_and_a_path_when_given(tmp_path: Path) -> None:
    assert load_config(env={}).api_tls_ca is None
    file = tmp_path / "c.toml"
    file.write_text('api_tls_ca = "/etc/crctl/keys/api/ca.pem"\n')
    assert load_config(file=file, env={}).api_tls_ca == Path("/etc/crctl/keys/api/ca.pem")
    file.write_text("api_tls_cert = 3\n")
    with pytest.raises(ConfigError, match="bad value 3 for api_tls_cert: expected a path"):
        load_config(file=file, env={})
    with pytest.raises(ConfigError, match="for api_tls_key: expected a path"):
        load_config(env={"CRCTL_API_TLS_KEY": ""})


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("heartbeat = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'heartbeat'"):
        load_config(file=file, env={})


def test_missing_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(file=tmp_path / "absent.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(file=bad, env={})


def test_config_is_frozen() -> None:
    config = load_config(env={})
    with pytest.raises(AttributeError):
        config.host = "x"  # type: ignore[misc]
