"""What both ends of an image transfer agree on (proto/crctl/v1/transfer.proto): the frames, the
chunk sizes, the ZAP domain."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from crctl.errors import CrctlError
from crctl.v1 import transfer_pb2

ZAP_DOMAIN = "crctl-images"

# The fetcher's defaults: chunks of CHUNK_BYTES, PIPELINE of them outstanding. Measured with
# bench/transfer.py: a 1 GiB rank (5 files) over loopback, the server in another process, 2
# cores; seconds (median and fastest of 5) and the CPU seconds of both processes (medians):
#                  store on ext4 (fsync'd)    store on tmpfs
#   256 KiB x 8     1.74  1.37   2.0 CPU      1.77  1.51   2.0 CPU
#   1 MiB x 2       2.15  1.25   2.3          1.56  1.35   1.8
#   1 MiB x 8       1.31  1.19   1.6          1.63  1.01   1.8
#   1 MiB x 16      2.55  1.64   3.0          1.24  1.08   1.9
#   4 MiB x 4       2.58  1.72   2.6          1.71  1.28   2.0
#   (plain cp: 0.30 s on ext4, 0.72 s with an fsync of the copies; 0.43 s on tmpfs)
# The machine is shared and its runs vary up to twofold; what stands out: 1 MiB x 8 was the
# fastest and cheapest on ext4 and among the fastest on tmpfs, 256 KiB chunks cost the server
# more per byte (a request's work each), 4 MiB ones cost more in the kernel. Loopback has no
# round trip to hide; 8 x 1 MiB in flight per rank keeps a 10 Gb/s link with a 6 ms round trip
# (or 100 Gb/s at 0.6 ms) full, with 8 MiB of memory per rank on each side. The transfer is
# bound by CPU here (CurveZMQ's encryption at both ends, BLAKE3, the copies).
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
