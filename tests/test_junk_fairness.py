"""One connection flooding tiny junk frames must not stall other senders,
fill the journal or flood the log. `serve` as a real subprocess; the junk
sender and a well-behaved sender run at the same time, each bounded in
count and time. The figures are printed on a line `JUNK FIGURES`."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import threading
import time

import pytest
from service_helpers import MllpConnection, Serve, frame, msa, msh10, wait_until, write_config

JUNK = b"\x0bX\x1c\x0d"  # a complete frame that is not an HL7 message


def oru(tag: str) -> bytes:
    return (
        f"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|{tag}|P|2.5.1\r"
        f"PID|1||ID-{tag}||Doe^John||19700101|M\r"
        f"OBX|1|NM|2345-7^Glucose^LN||5|mmol/L|3-6|N|||F\r"
    ).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.slow
def test_junk_flood_on_one_connection_leaves_a_good_sender_answered(tmp_path):
    outbox = tmp_path / "outbox"
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{outbox}"),
    )
    max_junk, max_s = 1_000_000, 10.0
    with Serve(cfg) as serve:
        stop = threading.Event()
        sent = {"junk": 0, "connections": 0}

        def junk_sender() -> None:
            chunk = JUNK * 2000
            deadline = time.monotonic() + max_s
            while not stop.is_set() and sent["junk"] < max_junk and time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", serve.port), timeout=5) as sock:
                        sent["connections"] += 1
                        while sent["junk"] < max_junk and not stop.is_set() and time.monotonic() < deadline:
                            sock.sendall(chunk)
                            sent["junk"] += 2000
                            sock.settimeout(0.5)
                            with contextlib.suppress(TimeoutError):
                                while sock.recv(65536):  # the AR answers, until serve closes
                                    pass
                                break  # closed by serve after its answers
                except OSError:
                    continue  # closed by serve: connect again and go on

        junk = threading.Thread(target=junk_sender, daemon=True)
        alone: list[float] = []  # the baseline: the good sender alone, in the same run
        with MllpConnection(serve.port) as good:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert msa(good.send(oru(f"A{len(alone)}")))[0] == "AA"
                alone.append(time.monotonic() - started)
        latencies: list[float] = []
        codes: list[str] = []
        junk.start()
        try:
            with MllpConnection(serve.port) as good:
                n = 0
                deadline = time.monotonic() + max_s
                while junk.is_alive() and time.monotonic() < deadline and n < 20_000:
                    n += 1
                    started = time.monotonic()
                    code, acked = msa(good.send(oru(f"G{n}")))
                    latencies.append(time.monotonic() - started)
                    codes.append(code)
                    assert acked == f"G{n}"
        finally:
            stop.set()
            junk.join(30)
        lines_during = len(serve.lines)
        wait_until(lambda: len(list(outbox.glob("*.hl7"))) >= len(codes) + len(alone))
        assert serve.stop() == 0
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    invalid = db.execute("SELECT COUNT(*), MAX(LENGTH(raw)) FROM messages WHERE state = 'invalid'").fetchone()
    messages = db.execute("SELECT COUNT(*) FROM messages WHERE state != 'invalid'").fetchone()[0]
    db.close()
    closed = [r for r in serve.records("connection_closed") if r.get("reason") == "too many invalid frames in a row"]
    figures = dict(
        junk_frames_sent=sent["junk"],
        junk_connections=sent["connections"],
        closed_for_junk=len(closed),
        invalid_rows=invalid[0],
        alone_p99_ms=round(percentile(alone, 0.99) * 1000, 1),
        good_sent=len(codes),
        good_aa=codes.count("AA"),
        good_p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
        good_max_ms=round(max(latencies) * 1000, 1),
        log_lines=lines_during,
        delivered=len(list(outbox.glob("*.hl7"))),
    )
    print("JUNK FIGURES " + json.dumps(figures))
    assert codes and codes.count("AA") == len(codes)
    assert max(latencies) < 1.0, figures  # a liveness bound: before, a good sender waited 10 s and more
    assert messages == len(codes) + len(alone) and figures["delivered"] == len(codes) + len(alone)
    assert closed and invalid[0] <= 20 * sent["connections"], figures  # each junk connection closed after 20
    assert invalid[1] <= 4096
    # Not a line per junk frame: what good traffic logs, one open/close per junk connection, and a few.
    assert figures["log_lines"] < 1000 + 4 * (len(codes) + len(alone)) + 3 * sent["connections"], figures


def test_twenty_invalid_frames_in_a_row_close_the_connection_after_their_answers(tmp_path):
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0, max_invalid_frames=5),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'outbox'}"),
    )
    with Serve(cfg) as serve:
        with MllpConnection(serve.port) as conn:
            # invalid frames that are not in a row do not count up
            for _ in range(4):
                assert msa(conn.send(b"junk"))[0] == "AR"
            assert msa(conn.send(oru("OK1"))) == ("AA", "OK1")
            conn.send_raw(frame(b"junk") * 8 + frame(oru("NEVER")))
            answers = [msa(conn.read_ack())[0] for _ in range(5)]
            assert answers == ["AR"] * 5
            with pytest.raises(ConnectionError):
                conn.read_ack()  # closed after the fifth in a row; the rest is not read
        assert serve.wait_record("connection_closed")
        assert serve.stop() == 0
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    rows = db.execute("SELECT control_id, state, LENGTH(raw) FROM messages ORDER BY id").fetchall()
    db.close()
    assert [r[1] == "invalid" for r in rows] == [True] * 4 + [False] + [True] * 5
    assert rows[4][0] == msh10(oru("OK1")) and "NEVER" not in {r[0] for r in rows}


def test_an_invalid_frame_is_kept_only_by_its_first_4096_bytes(tmp_path):
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'outbox'}"),
    )
    big = b"not HL7 " * 20_000  # 160,000 bytes
    with Serve(cfg) as serve:
        with MllpConnection(serve.port) as conn:
            assert msa(conn.send(big))[0] == "AR"
        assert serve.stop() == 0
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    raw, error = db.execute("SELECT raw, last_error FROM messages WHERE state = 'invalid'").fetchone()
    db.close()
    assert raw == big[:4096]
    assert "160000 bytes" in error and "sha256 " in error


def _reconnecting_flood(port: int, stop: threading.Event, max_s: float, sent: dict) -> None:
    """From another address (127.0.0.2): 50 writes of 2,000 junk frames per
    connection, without reading, and a new connection whenever serve closes one."""
    chunk = JUNK * 2000
    deadline = time.monotonic() + max_s
    while not stop.is_set() and time.monotonic() < deadline and sent["connections"] < 50_000:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2, source_address=("127.0.0.2", 0)) as sock:
                sent["connections"] += 1
                for _ in range(50):
                    if stop.is_set() or time.monotonic() >= deadline:
                        break
                    sock.sendall(chunk)
                    sent["junk"] += 2000
        except OSError:
            continue  # closed by serve (reset, broken pipe, or the 2 s timeout): connect again


@pytest.mark.slow
def test_a_reconnecting_junk_flood_from_one_peer_leaves_a_good_sender_answered(tmp_path):
    """Each junk connection is closed after max_invalid_frames; the peer
    reconnects at once. Its connections are slowed at accept time (a backoff
    per peer), so it cannot take the loop and the journal back with a new
    connection, and a good sender from another address stays answered."""
    outbox = tmp_path / "outbox"
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{outbox}"),
    )
    max_s = 10.0
    with Serve(cfg) as serve:
        stop = threading.Event()
        sent = {"junk": 0, "connections": 0}
        junk = threading.Thread(target=_reconnecting_flood, args=(serve.port, stop, max_s, sent), daemon=True)
        alone: list[float] = []  # the baseline: the good sender alone, in the same run
        with MllpConnection(serve.port) as good:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert msa(good.send(oru(f"A{len(alone)}")))[0] == "AA"
                alone.append(time.monotonic() - started)
        latencies: list[float] = []
        codes: list[str] = []
        junk.start()
        try:
            time.sleep(0.5)  # the flood is under way
            with MllpConnection(serve.port) as good:
                n = 0
                deadline = time.monotonic() + max_s - 1.0
                while time.monotonic() < deadline and n < 20_000:
                    n += 1
                    started = time.monotonic()
                    code, acked = msa(good.send(oru(f"G{n}")))
                    latencies.append(time.monotonic() - started)
                    codes.append(code)
                    assert acked == f"G{n}"
        finally:
            stop.set()
            junk.join(30)
        assert serve.stop() == 0
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    invalid = db.execute("SELECT COUNT(*) FROM messages WHERE state = 'invalid'").fetchone()[0]
    db.close()
    figures = dict(
        junk_connections=sent["connections"],
        junk_frames_written=sent["junk"],
        invalid_rows=invalid,
        backoffs=len(serve.records("peer_backoff")),
        alone_p99_ms=round(percentile(alone, 0.99) * 1000, 1),
        good_sent=len(codes),
        good_p50_ms=round(percentile(latencies, 0.5) * 1000, 1),
        good_p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
        good_max_ms=round(max(latencies) * 1000, 1),
    )
    print("RECONNECTING JUNK FIGURES " + json.dumps(figures))
    assert codes and codes.count("AA") == len(codes)
    # The mechanism, not a speed: the peer was slowed at accept, so the loop read
    # few of its frames (without the backoff: about 20 per connection, 1,000
    # connections and more in 10 s). Its p50/p99 are figures (printed above;
    # docs/reliability.md), not assertions; the worst ACK has a liveness bound.
    assert figures["backoffs"] >= 1, figures
    assert invalid <= 2000, figures
    assert figures["good_max_ms"] < 1000, figures


def _from(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _ack(sock: socket.socket, payload: bytes) -> tuple[str, str]:
    sock.sendall(frame(payload))
    buffer = b""
    while b"\x1c" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before an ACK")
        buffer += data
    return msa(buffer[buffer.index(b"\x0b") + 1 : buffer.index(b"\x1c")])


def _closed_at_once(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1024) == b""
    except ConnectionError:
        return True


def _answers_until_closed(sock: socket.socket) -> list[str]:
    sock.settimeout(10)
    buffer = b""
    with contextlib.suppress(ConnectionError):
        while data := sock.recv(65536):
            buffer += data
    return [msa(f[1:])[0] for f in buffer.split(b"\x1c\r") if f.startswith(b"\x0b")]


def test_a_peer_closed_for_invalid_frames_gets_one_connection_at_a_time_after_a_wait(tmp_path):
    """After a close for invalid frames, the peer's next connection is held
    unread until its wait is over, and then served; another one meanwhile is
    closed at once; a message clears the wait; other addresses never wait."""
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0, max_invalid_frames=2, invalid_backoff_s=0.3),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'outbox'}"),
    )
    with Serve(cfg) as serve:
        junk = _from(serve.port, "127.0.0.2")
        junk.sendall(JUNK * 5000)  # 5,000 frames in one write: 2 are answered, then the close
        assert _answers_until_closed(junk) == ["AR", "AR"]
        junk.close()
        assert serve.wait_record("peer_backoff")
        assert serve.records("peer_backoff")[0]["wait_s"] == 0.3
        held = _from(serve.port, "127.0.0.2")
        held.sendall(frame(oru("HELD")))
        second = _from(serve.port, "127.0.0.2")
        assert _closed_at_once(second)  # one connection at a time while the peer waits
        second.close()
        with MllpConnection(serve.port) as good:  # another address: not held
            assert msa(good.send(oru("GOOD"))) == ("AA", "GOOD")
        held.settimeout(15)
        buffer = b""
        while b"\x1c" not in buffer:
            buffer += held.recv(65536)
        assert msa(buffer[buffer.index(b"\x0b") + 1 : buffer.index(b"\x1c")]) == ("AA", "HELD")  # after its wait
        held.close()
        again = _from(serve.port, "127.0.0.2")  # the message cleared the wait
        assert _ack(again, oru("AGAIN")) == ("AA", "AGAIN")
        again.close()
        assert serve.stop() == 0
    assert len(serve.records("peer_backoff")) == 1
    assert [r["refused"] for r in serve.records("peer_backoff_over")] == [1]  # one line for the wait, not one a close
    assert not serve.records("connection_refused")
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    invalid = db.execute("SELECT COUNT(*) FROM messages WHERE state = 'invalid'").fetchone()[0]
    db.close()
    assert invalid == 2  # the 4,998 frames after the close were never parsed into rows
