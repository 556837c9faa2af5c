"""Handing the TCP bytes in flight at a checkpoint to their receiver: the arithmetic on two
ends' queues as dumped (agent.images.settle), and which ranks a host must read for it
(coordinator.placement.connected_ranks)."""

from __future__ import annotations

from agent.images import Queues, settle
from coordinator.placement import connected_ranks
from crctl.v1 import control_pb2

TOKEN = b"0123456789abcdef"


def ends(
    *, sent: bytes, unsent: bytes = b"", received_upto: int, start: int = 1000, window: int = 4096
) -> tuple[Queues, Queues]:
    """A sender whose send queue starts at ``start`` with ``sent`` (unacknowledged) then
    ``unsent`` bytes, and a receiver that expects byte ``received_upto`` next and offered a
    ``window`` from there."""
    sender = Queues(
        inq_seq=5000,
        inq=b"",
        outq_seq=(start + len(sent) + len(unsent)) & 0xFFFFFFFF,
        outq=sent + unsent,
        unsent=len(unsent),
        rcv_wup=5000,
        rcv_wnd=65536,
    )
    receiver = Queues(
        inq_seq=received_upto,
        inq=b"",
        outq_seq=5000,
        outq=b"",
        unsent=0,
        rcv_wup=received_upto,
        rcv_wnd=window,
    )
    return sender, receiver


def test_nothing_in_flight_changes_nothing() -> None:
    sender, receiver = ends(sent=b"", received_upto=1000)
    assert settle(sender, receiver) == sender
    assert settle(receiver, sender) == receiver


def test_bytes_the_receiver_never_got_move_into_its_queue() -> None:
    sender, receiver = ends(sent=TOKEN, received_upto=1000)
    got = settle(receiver, sender)
    assert got is not None
    assert got.inq == TOKEN and got.inq_seq == 1016
    gave = settle(sender, receiver)
    assert gave is not None
    assert gave.outq == b"" and gave.outq_seq == 1016 and gave.unacked == 0


def test_bytes_received_whose_ack_was_lost_are_not_delivered_twice() -> None:
    sender, receiver = ends(sent=TOKEN, received_upto=1006)
    got = settle(receiver, sender)
    assert got is not None and got.inq == TOKEN[6:] and got.inq_seq == 1016
    gave = settle(sender, receiver)
    assert gave is not None and gave.outq == b""


def test_unsent_bytes_go_as_far_as_the_receivers_window() -> None:
    sender, receiver = ends(sent=TOKEN, unsent=b"later", received_upto=1000)
    got = settle(receiver, sender)
    assert got is not None and got.inq == TOKEN + b"later" and got.inq_seq == 1021
    gave = settle(sender, receiver)
    assert gave is not None and gave.outq == b"" and gave.unsent == 0


def test_unsent_bytes_beyond_the_window_stay_with_the_sender() -> None:
    sender, receiver = ends(sent=TOKEN, unsent=b"later", received_upto=1000, window=18)
    got = settle(receiver, sender)
    assert got is not None and got.inq == TOKEN + b"la"
    gave = settle(sender, receiver)
    assert gave is not None
    assert gave.outq == b"ter" and gave.unsent == 3 and gave.first_unacked == 1018


def test_queued_unread_bytes_are_kept_in_front() -> None:
    sender, receiver = ends(sent=TOKEN, received_upto=1000)
    receiver = Queues(
        inq_seq=1000, inq=b"unread", outq_seq=5000, outq=b"", unsent=0, rcv_wup=1000, rcv_wnd=64
    )
    got = settle(receiver, sender)
    assert got is not None and got.inq == b"unread" + TOKEN


def test_sequence_numbers_wrap_around() -> None:
    start = (1 << 32) - 6
    sender, receiver = ends(sent=TOKEN, received_upto=start, start=start)
    got = settle(receiver, sender)
    assert got is not None and got.inq == TOKEN and got.inq_seq == 10


def test_ends_that_do_not_fit_together_are_left_alone() -> None:
    sender, receiver = ends(sent=TOKEN, received_upto=1020)  # expects bytes never sent
    assert settle(receiver, sender) is None
    assert settle(sender, receiver) is None
    sender, receiver = ends(sent=TOKEN, received_upto=900)  # lost bytes already acknowledged
    assert settle(receiver, sender) is None


def _image(rank: int, *connections: tuple[str, int, str, int]) -> control_pb2.RankImage:
    image = control_pb2.RankImage(rank=rank, host=f"h{rank}")
    for local, local_port, peer, peer_port in connections:
        image.sockets.add(
            proto="tcp",
            state="established",
            local_address=local,
            local_port=local_port,
            peer_address=peer,
            peer_port=peer_port,
        )
    image.sockets.add(proto="tcp", state="listen", local_address="10.0.0.9", local_port=7000)
    return image


def test_connected_ranks_are_those_at_the_far_end_of_a_connection() -> None:
    ring = [
        _image(0, ("10.0.0.1", 5000, "10.0.0.2", 7001), ("10.0.0.1", 7000, "10.0.0.3", 5002)),
        _image(1, ("10.0.0.2", 7001, "10.0.0.1", 5000), ("10.0.0.2", 5001, "10.0.0.3", 7002)),
        _image(2, ("10.0.0.3", 7002, "10.0.0.2", 5001), ("10.0.0.3", 5002, "10.0.0.1", 7000)),
        _image(3, ("10.0.0.4", 5003, "192.0.2.1", 80)),  # only an outside peer
    ]
    assert [i.rank for i in connected_ranks(ring, [0])] == [1, 2]
    assert [i.rank for i in connected_ranks(ring, [0, 1])] == [2]
    assert connected_ranks(ring, [3]) == []
