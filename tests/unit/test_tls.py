"""Mutual TLS for the API over TCP (crctl.tls, `crctl keys api-*`): a real grpc.aio server on
127.0.0.1, port 0, with the standard health service and a method answering the caller's
certificate name; only clients holding a certificate from the API's own CA get through."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import grpc.aio
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cli.exit_codes import ExitCode
from cli.main import main
from crctl import tls
from crctl.config import Config, load_config
from crctl.errors import ConfigError

Result = TypeVar("Result")
WHOAMI = "/crctl.test.Whoami/Name"


async def _whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    name = tls.certificate_name(context.auth_context())
    return b"<none>" if name is None else name.encode()


def _serve(
    credentials: grpc.ServerCredentials | None,
    scenario: Callable[[str], Awaitable[Result]],
) -> Result:
    """Serve health + whoami on 127.0.0.1:0 (TLS with ``credentials``, plain without); the
    result of ``scenario(target)``."""

    async def run() -> Result:
        server = grpc.aio.server()
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        whoami = grpc.unary_unary_rpc_method_handler(_whoami)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("crctl.test.Whoami", {"Name": whoami}),)
        )
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await server.start()
        try:
            return await scenario(f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    return asyncio.run(run())


async def _ask(target: str, credentials: grpc.ChannelCredentials | None) -> tuple[int, str]:
    """The health status and the name the server read, over a TLS channel (plain without)."""
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        name = await channel.unary_unary(WHOAMI)(b"", timeout=10)
    return reply.status, name.decode()


def _refused(target: str, credentials: grpc.ChannelCredentials) -> Awaitable[grpc.StatusCode]:
    async def attempt() -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _ask(target, credentials)
        return refused.value.code()

    return attempt()


@pytest.fixture
def api(tmp_path: Path) -> Path:
    directory = tmp_path / "api"
    tls.init_api(directory, ["coord.example", "10.0.0.7"])
    tls.issue_client(directory, "alice")
    return directory


def _client(api: Path, name: str) -> grpc.ChannelCredentials:
    clients = api / "clients"
    return tls.channel_credentials(api / "ca.pem", clients / f"{name}.pem", clients / f"{name}.key")


def test_a_client_with_a_certificate_from_the_api_ca_gets_through_and_is_named(api: Path) -> None:
    status, name = _serve(tls.server_credentials(api), lambda t: _ask(t, _client(api, "alice")))

    assert status == health_pb2.HealthCheckResponse.SERVING
    assert name == "alice"


def test_a_client_without_a_certificate_is_refused_at_the_handshake(api: Path) -> None:
    server_only = grpc.ssl_channel_credentials(root_certificates=(api / "ca.pem").read_bytes())

    code = _serve(tls.server_credentials(api), lambda t: _refused(t, server_only))

    assert code == grpc.StatusCode.UNAVAILABLE


def test_a_client_certificate_from_another_ca_is_refused(api: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    tls.init_api(other)
    tls.issue_client(other, "alice")
    # It trusts the real server (our CA), but its own certificate is the other CA's.
    forged = tls.channel_credentials(
        api / "ca.pem", other / "clients" / "alice.pem", other / "clients" / "alice.key"
    )

    code = _serve(tls.server_credentials(api), lambda t: _refused(t, forged))

    assert code == grpc.StatusCode.UNAVAILABLE


def test_a_client_refuses_a_server_whose_certificate_another_ca_signed(
    api: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    tls.init_api(other)

    code = _serve(tls.server_credentials(other), lambda t: _refused(t, _client(api, "alice")))

    assert code == grpc.StatusCode.UNAVAILABLE


def test_a_plain_connection_carries_no_certificate_name() -> None:
    status, name = _serve(None, lambda t: _ask(t, None))

    assert status == health_pb2.HealthCheckResponse.SERVING
    assert name == "<none>"


def test_certificate_name_needs_tls_and_exactly_one_common_name() -> None:
    assert tls.certificate_name({}) is None
    assert tls.certificate_name({"x509_common_name": [b"alice"]}) is None  # no TLS said so
    ssl = {"transport_security_type": [b"ssl"]}
    assert tls.certificate_name(ssl) is None
    assert tls.certificate_name({**ssl, "x509_common_name": [b"a", b"b"]}) is None
    assert tls.certificate_name({**ssl, "x509_common_name": [b"slurm"]}) == "slurm"


def test_keys_are_readable_by_their_owner_only(api: Path) -> None:
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    for key in ("ca.key", "server.key", "clients/alice.key"):
        assert mode(api / key) == 0o600, key
    for cert in ("ca.pem", "server.pem", "clients/alice.pem"):
        assert mode(api / cert) == 0o644, cert
    assert mode(api) == 0o700


def test_the_server_certificate_names_the_given_hosts_and_the_local_ones(api: Path) -> None:
    cert = x509.load_pem_x509_certificate((api / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert names.get_values_for_type(x509.DNSName) == ["coord.example", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "10.0.0.7",
        "127.0.0.1",
    ]


def test_a_second_init_refuses_to_overwrite_unless_forced(api: Path) -> None:
    before = (api / "ca.pem").read_bytes()

    with pytest.raises(ConfigError, match="refusing to overwrite"):
        tls.init_api(api)
    assert (api / "ca.pem").read_bytes() == before

    tls.init_api(api, overwrite=True)
    assert (api / "ca.pem").read_bytes() != before
    assert stat.S_IMODE((api / "ca.key").stat().st_mode) == 0o600


def test_a_refused_init_writes_nothing(tmp_path: Path) -> None:
    api = tmp_path / "api"
    api.mkdir()
    (api / "server.pem").write_text("kept")

    with pytest.raises(ConfigError, match=r"server\.pem"):
        tls.init_api(api)
    assert sorted(p.name for p in api.iterdir()) == ["server.pem"]


def test_a_client_name_must_be_a_plain_user_name(api: Path) -> None:
    for bad in ("../etc", "", "-x", "a b", "alice/bob"):
        with pytest.raises(ConfigError, match="bad client name"):
            tls.issue_client(api, bad)


def test_a_client_certificate_needs_the_ca_first(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="crctl keys api-init"):
        tls.issue_client(tmp_path / "none", "alice")


def test_the_cli_makes_the_files_once_and_refuses_a_second_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = tmp_path / "api"
    assert main(["keys", "api-init", "--dir", str(api), "--host", "coord.example"]) == ExitCode.OK
    assert main(["keys", "api-client", "slurm", "--dir", str(api)]) == ExitCode.OK
    capsys.readouterr()

    assert main(["keys", "api-init", "--dir", str(api)]) == ExitCode.USAGE
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["keys", "api-client", "slurm", "--dir", str(api)]) == ExitCode.USAGE
    assert main(["keys", "api-client", "slurm", "--dir", str(api), "--force"]) == ExitCode.OK

    _, name = _serve(tls.server_credentials(api), lambda t: _ask(t, _client(api, "slurm")))
    assert name == "slurm"


def test_the_api_directory_defaults_to_keys_dir_api() -> None:
    assert tls.api_dir(Config(keys_dir=Path("/etc/k"))) == Path("/etc/k/api")


def test_client_credentials_come_from_the_three_config_keys(api: Path) -> None:
    assert tls.client_credentials(load_config(env={})) is None
    with pytest.raises(ConfigError, match="api_tls_key"):
        tls.client_credentials(load_config(env={"CRCTL_API_TLS_CA": str(api / "ca.pem")}, flags={}))

    config = load_config(
        env={
            "CRCTL_API_TLS_CA": str(api / "ca.pem"),
            "CRCTL_API_TLS_CERT": str(api / "clients" / "alice.pem"),
        },
        flags={"api_tls_key": str(api / "clients" / "alice.key")},
    )
    assert config.api_tls_ca == api / "ca.pem"
    credentials = tls.client_credentials(config)
    assert credentials is not None

    _, name = _serve(tls.server_credentials(api), lambda t: _ask(t, credentials))
    assert name == "alice"
