"""The sans-I/O ACK waiter: MSA-2 matching and what each answer means, for
the forwarder and `send` alike. Pure: bytes in, replies out."""

from __future__ import annotations

import pytest

from b12comment.wire.mllp import encode
from b12comment.wire.waiter import Ack, AckWaiter, Unreadable


def ack(code: str, acked: str, err: str = "") -> bytes:
    payload = f"MSH|^~\\&|D|D|B|B|20240101||ACK|A{acked}|P|2.5.1\rMSA|{code}|{acked}\r"
    if err:
        payload += f"ERR|||{err}^Error^HL70357|E\r"
    return encode(payload.encode())


@pytest.mark.parametrize(
    "code, accepted, rejected",
    [("AA", True, False), ("CA", True, False), ("AR", False, True), ("CR", False, True), ("AE", False, False),
     ("CE", False, False), ("XX", False, False)],
)  # fmt: skip
def test_each_code_means_one_thing(code, accepted, rejected):
    waiter = AckWaiter()
    waiter.expect("M1")
    reply = waiter.feed(ack(code, "M1"))
    assert isinstance(reply, Ack)
    assert (reply.accepted, reply.rejected) == (accepted, rejected)
    assert reply.accepted_for("M1") is accepted
    assert reply.accepted_for("M2") is False


def test_an_ack_for_another_control_id_is_skipped_and_noted():
    waiter = AckWaiter()
    waiter.expect("M2")
    assert waiter.feed(ack("AA", "M1")) is None  # a late answer to an earlier message
    assert waiter.others == ["M1"]
    reply = waiter.feed(ack("AR", "M2"))
    assert reply == Ack("AR", "M2")


def test_the_wrong_ack_and_the_right_one_in_one_read_gives_the_right_one():
    waiter = AckWaiter()
    waiter.expect("M2")
    assert waiter.feed(ack("AA", "OTHER") + ack("AE", "M2", "207")) == Ack("AE", "M2", "207")
    assert waiter.others == ["OTHER"]


def test_first_answer_mode_ends_on_any_ack_but_does_not_accept_it():
    waiter = AckWaiter(first_answer=True)
    waiter.expect("M2")
    reply = waiter.feed(ack("AA", "SOMEONE-ELSE"))
    assert isinstance(reply, Ack) and reply.accepted and not reply.accepted_for("M2")


def test_an_answer_split_across_reads_waits_for_its_end():
    waiter = AckWaiter()
    waiter.expect("M1")
    data = ack("AA", "M1")
    assert waiter.feed(data[:10]) is None
    assert waiter.heard == 10
    assert waiter.feed(data[10:]) == Ack("AA", "M1")
    assert waiter.heard == len(data)


def test_expect_starts_over_and_reset_drops_a_half_read_frame():
    waiter = AckWaiter()
    waiter.expect("M1")
    waiter.feed(ack("AA", "X") + ack("AA", "M1")[:8])
    waiter.expect("M1")
    assert (waiter.heard, waiter.others) == (0, [])
    waiter.reset()  # a new connection: the 8 bytes of the old one are gone
    assert waiter.feed(ack("AA", "M1")[8:]) is None
    assert waiter.feed(ack("AA", "M1")) == Ack("AA", "M1")


def test_a_frame_that_is_not_an_ack_is_unreadable():
    waiter = AckWaiter()
    waiter.expect("M1")
    reply = waiter.feed(encode(b"MSH|^~\\&|D|D|B|B|20240101||ACK|A1|P|2.5.1\r"))
    assert isinstance(reply, Unreadable) and "no MSA" in reply.why


def test_an_ack_over_the_size_limit_is_not_an_answer():
    waiter = AckWaiter(max_ack_bytes=40)
    waiter.expect("M1")
    assert waiter.feed(ack("AA", "M1")) is None


def test_the_detail_names_the_error_code():
    waiter = AckWaiter()
    waiter.expect("M1")
    reply = waiter.feed(ack("AE", "M1", "207"))
    assert isinstance(reply, Ack) and reply.detail == "AE, error code 207"
