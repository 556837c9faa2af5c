"""Reading and rewriting CRIU image folders, with no CRIU process: what a checkpoint holds
(INET sockets, regular files, image files), a rank's working copy for a restore, whose sockets
can carry new addresses (restart on other hosts) or come back closed (peers outside the job),
and manifests: the digests and checks of :mod:`crctl.digests` (shared with the coordinator,
which has no pycriu), re-exported here, and what a restore checks besides.

Besides :mod:`agent.criu`, this is the only package that imports pycriu. Layout: ``_format``
(loading and atomically replacing one image, address words), ``_inspect`` (what a dump holds),
``_working_copy`` (the copy a restore may rewrite), ``_sockets`` (rewriting socket entries),
``_inflight`` (TCP bytes in flight at the checkpoint handed to their receiver), ``_checks``
(page images, regular files a restore needs).

What CRIU 4.x writes, as found on CRIU 4.1.1 and 4.2.1:

* ``files.img`` holds every file the tasks use as ``FileEntry{type, id, <one sub-message>}``.
  Sockets are ``type: INETSK`` with ``isk: InetSkEntry``: ``family`` (2 / 10), ``type``,
  ``proto``, ``state`` (the kernel's TCP state numbers; 10 is listen), ``src_port`` /
  ``dst_port`` and ``src_addr`` / ``dst_addr``: lists of uint32 words holding the address bytes
  in network order, in host byte order words (one word for IPv4, four for IPv6).
* Regular files are ``type: REG`` with ``reg: RegFileEntry``: ``name`` (the path), ``mode``
  (the whole ``st_mode``) and ``size``: ``st_size`` at dump time, recorded for every regular
  file except those opened ``O_WRONLY | O_APPEND`` (log files). A restore refuses a file whose
  size or mode differs (and, for ELF files, whose build id differs). Mapped files (the
  executable, libraries), the cwd and root directories and devices are ``REG`` entries too.
* ``fdinfo-<n>.img`` maps the tasks' descriptors to file ids; ``remap-fpath.img`` marks files
  that were deleted while open (``GHOST``: their contents are in the images).
* ``tcp-stream-<ino>.img`` holds sequence numbers, windows and queued data: no addresses. Its
  ``TcpStreamEntry`` is followed by the receive queue's bytes (``inq_len``, ending just before
  ``inq_seq``, the next byte expected) then the send queue's (``outq_len``, ending at
  ``outq_seq``; its last ``unsq_len`` bytes were never sent).
  Tasks in the host's network namespace have no ``netdev`` / ``ifaddr`` / ``route`` images,
  so the socket entries in ``files.img`` are the only addresses to rewrite.
"""

from agent.images._checks import is_page_image, verify_regular_files
from agent.images._format import FILES_IMG, INVENTORY_IMG, REMAP_IMG, ImageError
from agent.images._inflight import (
    HandedOver,
    Queues,
    connection_ends,
    hand_over_in_flight,
    read_for_hand_over,
    settle,
)
from agent.images._inspect import (
    Endpoint,
    ImageFile,
    ImageSummary,
    InetSocket,
    RegularFile,
    inspect,
)
from agent.images._sockets import (
    AddressMapError,
    RewriteReport,
    close_connections,
    external_connections,
    rewrite_socket_addresses,
)
from agent.images._working_copy import (
    LINK_MIN_BYTES,
    CopyReport,
    make_working_copy,
    skip_criu_network_lock,
)
from crctl.digests import FileDigest, Problem, digest_files, verify

__all__ = [
    "FILES_IMG",
    "INVENTORY_IMG",
    "LINK_MIN_BYTES",
    "REMAP_IMG",
    "AddressMapError",
    "CopyReport",
    "Endpoint",
    "FileDigest",
    "HandedOver",
    "ImageError",
    "ImageFile",
    "ImageSummary",
    "InetSocket",
    "Problem",
    "Queues",
    "RegularFile",
    "RewriteReport",
    "close_connections",
    "connection_ends",
    "digest_files",
    "external_connections",
    "hand_over_in_flight",
    "inspect",
    "is_page_image",
    "make_working_copy",
    "read_for_hand_over",
    "rewrite_socket_addresses",
    "settle",
    "skip_criu_network_lock",
    "verify",
    "verify_regular_files",
]
