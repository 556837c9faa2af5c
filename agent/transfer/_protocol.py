"""What both ends of an image transfer agree on (proto/crctl/v1/transfer.proto): the frames, the
chunk sizes, the ZAP domain."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from crctl.errors import CrctlError
from crctl.v1 import transfer_pb2

ZAP_DOMAIN = "crctl-images"

# The fetcher's defaults: chunks of CHUNK_BYTES, PIPELINE of them asked for at a time. Measured
# with bench/transfer.py (a 1 GiB rank of 4 files over loopback, server in its own process, 2
# cores, median of 3; the store on tmpfs, where no fsync weighs):
#   chunk   pipeline   MB/s
#   ...
CHUNK_BYTES = 1 << 20
PIPELINE = 8

MAX_CHUNK_BYTES = 4 << 20  # the largest chunk a server reads for one request
# The largest request a server takes (ZMQ_MAXMSGSIZE): a request is a path and a few numbers.
MAX_REQUEST_BYTES = 16 << 10
# Replies a server queues for one client (ZMQ_SNDHWM) before it drops them: a client never has
# more outstanding than its pipeline, so only one that ignores its credit loses answers.
MAX_QUEUED_REPLIES = 64


class MalformedFrame(CrctlError):
    """A frame that is not the message it should be."""


def decode_request(frame: bytes) -> transfer_pb2.ChunkRequest:
    try:
        return transfer_pb2.ChunkRequest.FromString(frame)
    except DecodeError as exc:
        raise MalformedFrame(f"malformed chunk request: {exc}") from None


def decode_reply(frame: bytes) -> transfer_pb2.ChunkReply:
    try:
        return transfer_pb2.ChunkReply.FromString(frame)
    except DecodeError as exc:
        raise MalformedFrame(f"malformed chunk reply: {exc}") from None
