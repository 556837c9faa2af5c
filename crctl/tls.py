"""Mutual TLS for the coordinator's gRPC API over TCP: a CA the admin keeps, the coordinator's
server certificate, and client certificates whose subject common name is the caller's identity
(a local user name on the coordinator host, e.g. ``alice`` or ``slurm``).

Layout under the API keys directory (default ``<keys_dir>/api/``, see ``api_dir``)::

    ca.pem  ca.key            the CA; ca.key signs new client certificates (keep it with the admin)
    server.pem  server.key    the coordinator's certificate (the names given, localhost, 127.0.0.1)
    clients/NAME.pem  .key    a client's certificate (CN = NAME) and key: hand both, with ca.pem,
                              to the user or scheduler called NAME

Keys are EC P-256: grpc's TLS (BoringSSL) refuses Ed25519 certificates (no common signature
algorithm). Keys are written with mode 0600; existing files are never replaced unless asked
(``overwrite=True``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crctl.config import Config
from crctl.errors import ConfigError

CA_DAYS = 3650
CERT_DAYS = 825
# Names the coordinator's certificate always holds: a client on the coordinator's own host.
LOCAL_NAMES = ("localhost", "127.0.0.1")
# A client's name becomes a file name and is matched against local user names.
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def api_dir(config: Config) -> Path:
    """Where the API's CA and certificates live by default."""
    return config.keys_dir / "api"


def init_api(
    directory: Path,
    hosts: Sequence[str] = (),
    *,
    overwrite: bool = False,
    now: datetime.datetime | None = None,
) -> None:
    """Create the CA and the coordinator's server certificate for ``hosts`` (DNS names or IP
    addresses clients connect to) in ``directory``."""
    targets = [directory / n for n in ("ca.pem", "ca.key", "server.pem", "server.key")]
    _refuse_existing(targets, overwrite)
    start = _now(now)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crctl API CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), start, CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    names = list(dict.fromkeys([*hosts, *LOCAL_NAMES]))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _leaf(
        ca_cert,
        ca_key,
        server_key,
        names[0],
        ExtendedKeyUsageOID.SERVER_AUTH,
        start,
        x509.SubjectAlternativeName([_general_name(n) for n in names]),
    )
    _make_dir(directory)
    _write(directory / "ca.key", _key_pem(ca_key), secret=True, overwrite=overwrite)
    _write(directory / "ca.pem", _cert_pem(ca_cert), secret=False, overwrite=overwrite)
    _write(directory / "server.key", _key_pem(server_key), secret=True, overwrite=overwrite)
    _write(directory / "server.pem", _cert_pem(server_cert), secret=False, overwrite=overwrite)


def issue_client(
    directory: Path,
    name: str,
    *,
    overwrite: bool = False,
    now: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """Sign a client certificate whose common name is ``name`` with the CA in ``directory``;
    returns (certificate, key) paths under ``directory/clients/``."""
    if not _CLIENT_NAME.fullmatch(name):
        raise ConfigError(
            f"bad client name {name!r}: a user name (letters, digits, '_', '.', '-'), "
            "not starting with '.' or '-'"
        )
    cert_path = directory / "clients" / f"{name}.pem"
    key_path = directory / "clients" / f"{name}.key"
    _refuse_existing([cert_path, key_path], overwrite)
    ca_cert = _load_cert(directory / "ca.pem")
    ca_key = _load_key(directory / "ca.key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_cert, ca_key, key, name, ExtendedKeyUsageOID.CLIENT_AUTH, _now(now))
    _make_dir(directory / "clients")
    _write(key_path, _key_pem(key), secret=True, overwrite=overwrite)
    _write(cert_path, _cert_pem(cert), secret=False, overwrite=overwrite)
    return cert_path, key_path


def server_credentials(directory: Path) -> grpc.ServerCredentials:
    """The coordinator's TLS credentials: its certificate, and clients must present one signed
    by the CA in ``directory``."""
    return grpc.ssl_server_credentials(
        [(_read(directory / "server.key"), _read(directory / "server.pem"))],
        root_certificates=_read(directory / "ca.pem"),
        require_client_auth=True,
    )


def channel_credentials(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    """A client's TLS credentials: the CA that signed the coordinator's certificate, and the
    client's own certificate and key."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
    )


def client_credentials(config: Config) -> grpc.ChannelCredentials | None:
    """The channel credentials ``api_tls_ca``, ``api_tls_cert`` and ``api_tls_key`` name, or
    None when none is set (a plain connection); some but not all set is an error."""
    paths = {
        "api_tls_ca": config.api_tls_ca,
        "api_tls_cert": config.api_tls_cert,
        "api_tls_key": config.api_tls_key,
    }
    missing = [k for k, v in paths.items() if v is None]
    if len(missing) == len(paths):
        return None
    if missing:
        raise ConfigError(
            f"TLS to the API needs all of api_tls_ca, _cert, _key: {', '.join(missing)} unset"
        )
    ca, cert, key = (v for v in paths.values() if v is not None)
    return channel_credentials(ca, cert, key)


def certificate_name(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The common name of the client certificate a TLS connection verified (grpc's
    ``context.auth_context()``), or None: no TLS, no certificate, or not exactly one name."""
    if list(auth_context.get("transport_security_type", ())) != [b"ssl"]:
        return None
    names = list(auth_context.get("x509_common_name", ()))
    if len(names) != 1:
        return None
    try:
        return names[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


# --- private ---------------------------------------------------------------------------------


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    start: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # A little slack for clocks that run behind the CA's.
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(start + datetime.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    start: datetime.datetime,
    names: x509.SubjectAlternativeName | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), start, CERT_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if names is not None:
        builder = builder.add_extension(names, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"refusing to overwrite {', '.join(existing)} (--force replaces them)")


def _make_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def _write(path: Path, data: bytes, *, secret: bool, overwrite: bool) -> None:
    """Write a new file (mode 0600 for a secret, else 0644); with ``overwrite`` it replaces an
    existing one atomically, else an existing one is an error."""
    mode = 0o600 if secret else 0o644
    target = path.with_name(f".{path.name}.new") if overwrite else path
    if overwrite:
        target.unlink(missing_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"refusing to overwrite {path} (--force replaces it)") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(target, mode)  # whatever the umask
    if overwrite:
        os.replace(target, path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}; create it with `crctl keys api-init`"
            " (or `crctl keys api-client NAME`)"
        ) from None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an EC private key (made by `crctl keys api-init`)")
    return key
