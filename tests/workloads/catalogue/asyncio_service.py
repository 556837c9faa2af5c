"""asyncio_service (2 ranks): an asyncio TCP server on rank 0 and STREAMS concurrent asyncio
client streams from rank 1, request/response on each.

Covers: an asyncio event loop (its epoll, self-pipe socketpair, many non-blocking sockets)
with many connections at once. Each stream sends "<stream index>" first, then requests
numbered from 0; the server checks each request (sequence number and checksum per stream)
and answers with the matching reply message; the client checks every reply. No connection
is opened after the start: the server stops listening once all streams are in. Progress:
requests checked (rank 0), replies checked (rank 1)."""

from __future__ import annotations

import asyncio
import struct

from tests.workloads.catalogue import _common

STREAMS = 32
LENGTH = _common.FRAME_HEADER


def tags(index: int) -> tuple[bytes, bytes]:
    return f"request{index}".encode(), f"reply{index}".encode()


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
    if size > _common.MAX_FRAME:
        raise ValueError(f"frame of {size} bytes: the stream is corrupted")
    return await reader.readexactly(size)


async def serve(args: _common.Args, status: _common.Status) -> None:
    connected = asyncio.Event()
    streams = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal streams
        streams += 1
        if streams == STREAMS:
            connected.set()
        try:
            (index,) = struct.unpack("!H", await reader.readexactly(2))
            request_tag, reply_tag = tags(index)
            seq = 0
            while True:
                status.check(_common.check_message(await read_frame(reader), request_tag, seq))
                writer.write(_common.frame(_common.make_message(reply_tag, seq)))
                await writer.drain()
                seq += 1
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            status.error(f"server stream: {exc!r}")

    server = await asyncio.start_server(handle, args.own_address, args.listen_port(0))
    await connected.wait()
    server.close()  # stops listening; the connections stay
    await asyncio.Event().wait()


async def stream(index: int, args: _common.Args, status: _common.Status) -> None:
    deadline = asyncio.get_running_loop().time() + _common.CONNECT_PATIENCE
    while True:
        try:
            reader, writer = await asyncio.open_connection(args.addresses[0], args.listen_port(0))
            break
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)
    request_tag, reply_tag = tags(index)
    writer.write(struct.pack("!H", index))
    seq = 0
    while True:
        writer.write(_common.frame(_common.make_message(request_tag, seq)))
        await writer.drain()
        status.check(_common.check_message(await read_frame(reader), reply_tag, seq))
        seq += 1
        await asyncio.sleep(0.05)


async def run_clients(args: _common.Args, status: _common.Status) -> None:
    async def guarded(index: int) -> None:
        try:
            await stream(index, args, status)
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            status.error(f"client stream {index}: {exc!r}")

    await asyncio.gather(*(guarded(i) for i in range(STREAMS)))


def main() -> None:
    args, status = _common.start("asyncio_service", ranks=2)
    asyncio.run(serve(args, status) if args.rank == 0 else run_clients(args, status))
    _common.idle_forever()


if __name__ == "__main__":
    main()
