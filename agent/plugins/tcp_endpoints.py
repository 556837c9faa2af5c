"""The TCP endpoint rewriter as a restart plugin: before a rank is restored, the sockets of its
working copy get the new addresses of every moved host (local and peer ends alike), and, where
the ranks of an old host went to several new hosts, each endpoint the address of the new host of
the rank that holds it."""

from __future__ import annotations

from typing import ClassVar

import structlog

from agent import images
from crctl.plugins import RestartContext, RestartPlugin

log = structlog.get_logger()


class TcpEndpoints(RestartPlugin):
    """Rewrites ``context.images_dir``'s socket addresses with ``context.address_map`` and the
    rank's own ``local_address_map`` and ``peer_address_map``."""

    name: ClassVar[str] = "tcp-endpoints"

    async def before_restore(self, context: RestartContext) -> None:
        if not (context.address_map or context.local_address_map or context.peer_address_map):
            return
        report = images.rewrite_socket_addresses(
            context.images_dir,
            context.address_map,
            local_map=context.local_address_map,
            peer_map=context.peer_address_map,
        )
        log.info(
            "plugin_tcp_endpoints_rewritten",
            job=context.job,
            checkpoint=context.checkpoint,
            host=context.new_host,
            phase="before_restore",
            rank=context.rank,
            sockets=report.sockets,
        )
