"""The pure MLLP codec: framing, junk, oversize, odd end blocks, any split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from b12comment.wire.mllp import Decoder, Frame, Incomplete, Junk, Oversize, encode, pieces

MSG_A = b"MSH|^~\\&|LAB|H|EHR|H|20240101||ORU^R01|A1|P|2.5.1\rPID|1||123\r"
MSG_B = b"MSH|^~\\&|LAB|H|EHR|H|20240101||ADT^A01|B2|P|2.5.1\r"


def feed_all(decoder: Decoder, chunks) -> list:
    events = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def test_encode_wraps_payload():
    assert encode(MSG_A) == b"\x0b" + MSG_A + b"\x1c\x0d"


def test_encode_refuses_block_bytes_inside_payload():
    with pytest.raises(ValueError):
        encode(b"MSH|\x1c|")
    with pytest.raises(ValueError):
        encode(b"MSH|\x0b|")


def test_pieces_of_a_large_payload_make_its_frame_without_a_copy():
    payload = bytes(range(32, 127)) * 100
    parts = pieces(payload, 1000)
    assert b"".join(parts) == encode(payload)
    assert len(parts) == 2 + 10 and all(isinstance(p, memoryview) for p in parts[1:-1])
    assert pieces(b"MSH|small", 1000) == [encode(b"MSH|small")]
    with pytest.raises(ValueError):
        pieces(payload + b"\x1c" + payload, 1000)


def test_one_frame_in_one_read():
    assert Decoder().feed(encode(MSG_A)) == [Frame(MSG_A)]


def test_two_frames_in_one_read():
    assert Decoder().feed(encode(MSG_A) + encode(MSG_B)) == [Frame(MSG_A), Frame(MSG_B)]


def test_frame_split_into_single_bytes():
    data = encode(MSG_A) + encode(MSG_B)
    events = feed_all(Decoder(), [data[i : i + 1] for i in range(len(data))])
    assert events == [Frame(MSG_A), Frame(MSG_B)]


def test_split_between_end_block_and_carriage_return():
    data = encode(MSG_A)
    decoder = Decoder()
    assert decoder.feed(data[:-1]) == [Frame(MSG_A)]  # the frame does not wait for 0x0D
    assert decoder.feed(data[-1:]) == []  # and the 0x0D is swallowed, not junk
    assert decoder.feed(encode(MSG_B)) == [Frame(MSG_B)]


def test_junk_before_and_between_frames_is_counted_and_skipped():
    data = b"hello" + encode(MSG_A) + b"\r\n\r\n" + encode(MSG_B)
    assert Decoder().feed(data) == [Junk(5), Frame(MSG_A), Junk(4), Frame(MSG_B)]


def test_junk_spanning_reads_is_reported_once():
    decoder = Decoder()
    assert decoder.feed(b"abc") == []
    assert decoder.feed(b"defg") == []
    assert decoder.feed(encode(MSG_A)) == [Junk(7), Frame(MSG_A)]


def test_end_block_without_carriage_return():
    data = b"\x0b" + MSG_A + b"\x1c" + encode(MSG_B)
    assert Decoder().feed(data) == [Frame(MSG_A), Frame(MSG_B)]


def test_end_block_followed_by_other_byte_reports_it_as_junk():
    data = b"\x0b" + MSG_A + b"\x1cX" + encode(MSG_B)
    assert Decoder().feed(data) == [Frame(MSG_A), Junk(1), Frame(MSG_B)]


def test_new_start_block_abandons_unfinished_frame():
    data = b"\x0bMSH|partial" + encode(MSG_A)
    assert Decoder().feed(data) == [Junk(1 + len(b"MSH|partial")), Frame(MSG_A)]


def test_oversized_frame_is_discarded_with_its_head_and_next_frame_still_read():
    big = b"MSH|^~\\&|" + b"X" * 5000
    decoder = Decoder(max_message_bytes=1000, head_bytes=64)
    data = encode(big) + encode(MSG_A)
    events = feed_all(decoder, [data[i : i + 300] for i in range(0, len(data), 300)])
    assert events == [Oversize(len(big), big[:64]), Frame(MSG_A)]


def test_oversized_frame_is_not_held_in_memory():
    decoder = Decoder(max_message_bytes=1000, head_bytes=64)
    decoder.feed(b"\x0b")
    for _ in range(100):
        decoder.feed(b"Y" * 10_000)
        assert len(decoder._buffer) == 0
    assert decoder.feed(b"\x1c\x0d") == [Oversize(1_000_000, b"Y" * 64)]


def test_frame_of_exactly_the_limit_is_accepted():
    payload = b"Z" * 100
    assert Decoder(max_message_bytes=100).feed(encode(payload)) == [Frame(payload)]
    assert Decoder(max_message_bytes=99).feed(encode(payload)) == [Oversize(100, payload)]


def test_empty_frame():
    assert Decoder().feed(b"\x0b\x1c\x0d") == [Frame(b"")]


def test_close_reports_incomplete_frame_and_leftover_junk():
    decoder = Decoder()
    decoder.feed(b"\x0bMSH|")
    assert decoder.in_frame
    assert decoder.close() == [Incomplete(4)]
    assert not decoder.in_frame
    decoder.feed(b"zz")
    assert decoder.close() == [Junk(2)]
    assert decoder.close() == []


payloads = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))


@settings(max_examples=200, deadline=None)
@given(st.lists(payloads, min_size=1, max_size=6), st.lists(st.integers(1, 50), min_size=1, max_size=30))
def test_any_split_of_any_frames_gives_the_same_frames(messages, cuts):
    stream = b"".join(encode(m) for m in messages)
    chunks, pos, i = [], 0, 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        chunks.append(stream[pos : pos + size])
        pos += size
        i += 1
    assert feed_all(Decoder(), chunks) == [Frame(m) for m in messages]


def test_feed_with_a_limit_gives_the_same_events_a_few_frames_at_a_time():
    stream = b"junk" + encode(b"A") * 5 + b"\x0bhalf" + b"x\x1c" + b"\r" + encode(b"B")
    whole = Decoder().feed(stream)
    d = Decoder()
    passes = [d.feed(stream, limit=2)]
    while d.pending:
        passes.append(d.feed(b"", limit=2))
    assert [e for p in passes for e in p] == whole
    assert [sum(isinstance(e, (Frame, Oversize)) for e in p) for p in passes] == [2, 2, 2, 1]
    assert not d.in_frame and d.close() == []


def test_a_limited_feed_keeps_its_rest_for_the_next_bytes_and_close():
    d = Decoder()
    assert d.feed(encode(b"A") + encode(b"B") + b"\x0bC", limit=1) == [Frame(b"A")]
    assert d.pending
    assert d.feed(b"D\x1c\r", limit=5) == [Frame(b"B"), Frame(b"CD")]
    assert not d.pending
    d.feed(encode(b"E") + encode(b"F") + b"\x0bG", limit=1)
    assert d.close() == [Frame(b"F"), Incomplete(1)]  # close reads what was kept, then reports the rest
