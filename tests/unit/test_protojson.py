"""crctl.protojson writes what protobuf's own JSON printer writes, for every kind of field the
manifest has (and falls back to it for the kinds it does not handle)."""

from __future__ import annotations

import json

from google.protobuf.json_format import MessageToJson, Parse

from crctl import protojson
from crctl.v1 import control_pb2, coordinator_pb2


def printed(message: object) -> object:
    return json.loads(
        MessageToJson(
            message,  # type: ignore[arg-type]
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
    )


def manifest() -> coordinator_pb2.Manifest:
    m = coordinator_pb2.Manifest(checkpoint="ckpt-1", job="ring", leave_running=True)
    m.created_at.FromNanoseconds(1_700_000_000_123_456_789)
    rank = m.ranks.add(rank=0, host="h1", pid=4321, bytes=2**40 + 7, dump_seconds=0.125)
    rank.stdout_pipe = "pipe:[123]"
    rank.host_addresses.extend(["198.18.0.11", "::ffff:198.18.0.11"])
    rank.files.add(
        path="rank-0/pages-1.img",
        size=2**33,
        algorithm=control_pb2.DIGEST_ALGORITHM_BLAKE3,
        digest="ab" * 32,
    )
    rank.files.add(path="rank-0/core.img", size=10, sha256="cd" * 32)  # an old line
    rank.sockets.add(
        family="ipv4",
        state="established",
        local_address="198.18.0.11",
        local_port=7100,
        peer_address="198.18.0.12",
        peer_port=7101,
        proto="tcp",
    )
    m.ranks.add(rank=1, host="h2", dump_seconds=float("inf"))  # defaults and a special float
    return m


def test_a_manifest_is_written_exactly_as_protobufs_printer_writes_it() -> None:
    m = manifest()
    assert protojson.to_dict(m) == printed(m)


def test_what_it_writes_parses_back_to_the_same_manifest() -> None:
    m = manifest()
    assert Parse(json.dumps(protojson.to_dict(m)), coordinator_pb2.Manifest()) == m


def test_an_empty_message_prints_its_defaults() -> None:
    empty = coordinator_pb2.Manifest()
    assert protojson.to_dict(empty) == printed(empty)


def test_a_message_with_a_map_falls_back_to_protobufs_printer() -> None:
    order = control_pb2.PrepareRestore(job="ring", restore="rst-1")
    order.address_map["198.18.0.11"] = "198.18.0.14"
    order.ranks.add(rank=0).image.files.add(path="rank-0/a.img", size=3)
    assert protojson.to_dict(order) == printed(order)
