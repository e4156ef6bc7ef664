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
