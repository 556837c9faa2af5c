"""Host lists as Slurm writes them (``node[01-04,07],login1``), expanded with the kept
python-hostlist package: every place crctl takes hosts takes these."""

from __future__ import annotations

import hostlist

from crctl.errors import ConfigError


def expand(spec: str) -> list[str]:
    """``node[01-03],x`` -> ["node01", "node02", "node03", "x"], in order; "" -> []."""
    if not spec.strip():
        return []
    try:
        hosts: list[str] = hostlist.expand_hostlist(spec, allow_duplicates=True)
    except hostlist.BadHostlist as exc:
        raise ConfigError(f"bad host list {spec!r}: {exc}") from None
    seen: set[str] = set()
    for host in hosts:
        if host in seen:
            raise ConfigError(f"host list {spec!r} names {host} twice")
        seen.add(host)
    return hosts
