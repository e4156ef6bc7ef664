"""Idle connections must not lock real senders out: a limit per peer
address, a short wait for a connection's first byte, and the connection
idle longest closed when every slot is taken. `serve` as a subprocess."""

from __future__ import annotations

import socket

import pytest
from service_helpers import MllpConnection, Serve, msa, wait_until, write_config


def oru(tag: str) -> bytes:
    return f"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|{tag}|P|2.5.1\rOBX|1|NM|X^Y||1|mmol/L|1-2|N|||F\r".encode()


def config(tmp_path, **listener):
    return write_config(
        tmp_path / "config.toml",
        listener=dict(port=0, idle_timeout_s=60.0, **listener),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'outbox'}"),
    )


def closed_without_answer(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1024) == b""
    except ConnectionError:
        return True


def test_one_peer_cannot_take_every_slot(tmp_path):
    """64 idle connections from one address kept a real sender out; now one
    address holds at most max_connections_per_peer, and another gets in."""
    with Serve(config(tmp_path, max_connections=8, max_connections_per_peer=3, first_byte_timeout_s=30.0)) as serve:
        idle = [socket.create_connection(("127.0.0.1", serve.port)) for _ in range(3)]
        assert serve.wait_record("connection_opened", 3)
        extra = socket.create_connection(("127.0.0.1", serve.port))
        assert closed_without_answer(extra)
        assert serve.wait_record("connection_refused")
        refused = serve.records("connection_refused")
        assert [r["reason"] for r in refused] == ["max_connections_per_peer reached"]
        other = socket.socket()
        other.bind(("127.0.0.2", 0))  # another address on the loopback
        other.connect(("127.0.0.1", serve.port))
        conn = MllpConnection.__new__(MllpConnection)
        conn.sock, conn.buffer = other, b""
        assert msa(conn.send(oru("OTHER"))) == ("AA", "OTHER")
        for s in idle + [extra, other]:
            s.close()
        assert serve.stop() == 0


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed_after_first_byte_timeout(tmp_path):
    with Serve(config(tmp_path, first_byte_timeout_s=1.0)) as serve:
        silent = socket.create_connection(("127.0.0.1", serve.port))
        with MllpConnection(serve.port) as talking:
            assert msa(talking.send(oru("T1")))[0] == "AA"
            assert closed_without_answer(silent)
            assert serve.wait_record("connection_closed")  # the log line may come just after the close
            reasons = [r.get("reason") for r in serve.records("connection_closed")]
            assert reasons == ["nothing received (first_byte_timeout_s)"]
            assert msa(talking.send(oru("T2")))[0] == "AA"  # one that spoke keeps idle_timeout_s
        silent.close()
        assert serve.stop() == 0


@pytest.mark.slow
def test_all_slots_taken_the_connection_idle_longest_makes_room(tmp_path):
    with Serve(config(tmp_path, max_connections=3, max_connections_per_peer=0, first_byte_timeout_s=1.0)) as serve:
        conns = [MllpConnection(serve.port) for _ in range(3)]
        for n, c in enumerate(conns):
            assert msa(c.send(oru(f"S{n}")))[0] == "AA"  # each has spoken: idle_timeout_s applies
        # A newcomer is refused until the idle ones have been idle for
        # first_byte_timeout_s; then the one idle longest makes room for it.
        answers: list[tuple[str, str]] = []

        def newcomer_answered() -> bool:
            with MllpConnection(serve.port) as newcomer:
                try:
                    answers.append(msa(newcomer.send(oru("NEW"))))
                except ConnectionError:
                    return False  # closed at once: every slot still taken
            return True

        assert wait_until(newcomer_answered, timeout=15, interval=0.2)
        assert answers == [("AA", "NEW")]
        assert closed_without_answer(conns[0].sock)  # the one idle longest
        assert msa(conns[1].send(oru("S1b")))[0] == "AA"
        assert serve.wait_record("connection_closed")
        made_room = [r for r in serve.records("connection_closed") if "admit a new connection" in r.get("reason", "")]
        assert len(made_room) == 1
        for c in conns:
            c.close()
        assert serve.stop() == 0
