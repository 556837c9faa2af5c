"""`crctl keys api-init | api-client`: the TLS CA and certificates of the coordinator's API over
TCP (crctl.tls). `crctl keys init` (CurveZMQ keys for agents) is in cli.main."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from cli.exit_codes import ExitCode
from crctl.config import Config

AddKeyCommand = Callable[..., argparse.ArgumentParser]

# crctl.tls (and the cryptography package) are imported by these commands only, not at every
# start of the CLI.


def cmd_api_init(args: argparse.Namespace, config: Config) -> int:
    from crctl import tls

    directory = args.dir or tls.api_dir(config)
    tls.init_api(directory, args.host, overwrite=args.force)
    names = ", ".join(dict.fromkeys([*args.host, *tls.LOCAL_NAMES]))
    print(f"API CA and server certificate ({names}) in {directory}")
    print(f"keep {directory / 'ca.key'} with the admin; clients need {directory / 'ca.pem'}")
    return ExitCode.OK


def cmd_api_client(args: argparse.Namespace, config: Config) -> int:
    from crctl import tls

    directory = args.dir or tls.api_dir(config)
    cert, key = tls.issue_client(directory, args.name, overwrite=args.force)
    print(f"client certificate for {args.name}: {cert} and {key}")
    print(
        f"give {args.name} both with {directory / 'ca.pem'} (api_tls_cert, api_tls_key, api_tls_ca)"
    )
    return ExitCode.OK


def register(add: AddKeyCommand) -> None:
    """Adds the commands to `crctl keys`: ``add(name, func, help_text)`` is cli.main's
    ``add_to`` bound to the keys subparser. They take the client's config flags, not the
    daemons' (whose --host is an agent's name): keys_dir comes from the file or CRCTL_KEYS_DIR,
    or --dir names the directory itself."""
    init = add(
        "api-init",
        cmd_api_init,
        "create the API's TLS CA and the coordinator's server certificate",
    )
    init.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address clients reach the coordinator by (repeatable;"
        " localhost and 127.0.0.1 are always in)",
    )
    client = add(
        "api-client",
        cmd_api_client,
        "create a client certificate named after a user on the coordinator host",
    )
    client.add_argument("name", help="the identity: a user name on the coordinator host")
    for p in (init, client):
        p.add_argument("--dir", type=Path, help="API keys directory (default: keys_dir/api)")
        p.add_argument("--force", action="store_true", help="replace existing files")
