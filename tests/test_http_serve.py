"""The [http] endpoint inside `python -m b12comment serve` (a subprocess):
alone, beside the MLLP listener on the same event loop, the curl example of
docs/engines.md run for real, and its configuration checks."""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from builders import build
from http_helpers import post
from paths import REPO, SAMPLES
from service_helpers import MllpConnection, Serve, frame, free_port, msa, wait_until, write_config

from b12comment.config import ConfigError, parse_config


@contextlib.contextmanager
def http_only(config):
    """serve with no MLLP listener: it logs http_listening, not listening."""
    serve = Serve(config).start(expect_listening=False)
    try:
        yield serve
    finally:
        serve.kill()


def http_port(serve: Serve) -> int:
    assert serve.wait_record("http_listening"), serve.stderr
    return serve.records("http_listening")[0]["port"]


def test_http_only_serve_answers_and_writes_no_journal(tmp_path):
    config = write_config(
        tmp_path / "config.toml",
        listener=dict(enabled=False),
        http=dict(enabled=True, port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path}/out"),
        metrics=dict(port=free_port()),
        logging=dict(format="json"),
    )
    with http_only(config) as serve:
        port = http_port(serve)
        metrics_port = serve.records("http_listening")[0]["metrics_port"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        message = build()
        answer = post(conn, message, "application/hl7-v2; charset=UTF-8")
        assert answer.status == 200 and answer.headers["x-b12comment-decision"] == "commented"
        assert answer.body.startswith(message[: message.index(b"OBX|1|")])
        conn.request("GET", "/healthz")
        health = conn.getresponse()
        assert health.status == 200 and health.read() == b"ok\n"
        assert serve.records("listening") == []  # no MLLP listener
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as scrape:
            text = scrape.read().decode()
        assert 'b12comment_http_decisions_total{decision="commented"} 1' in text
        assert not [ln for ln in text.splitlines() if ln.startswith("b12comment_queue_depth ")]  # no journal
        assert serve.stop() == 0
    assert not (tmp_path / "journal.sqlite3").exists()
    assert not (tmp_path / "out").exists()
    record = [r for r in serve.records("http_request") if r.get("control_id")][0]
    assert record["commented"] is True and record["status"] == 200


def test_http_beside_mllp_on_one_event_loop(tmp_path):
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        http=dict(enabled=True, port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{out}"),
        logging=dict(format="json"),
    )
    with Serve(config) as serve:
        port = http_port(serve)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        over_http = build(birth="19700101").replace(b"CTRL0001", b"HTTP0001")
        with MllpConnection(serve.port) as mllp:
            for i in range(5):
                answer = post(conn, over_http, "text/plain; charset=ISO-8859-1")
                assert answer.status == 200 and answer.body == over_http
                ack = mllp.send(frame(build().replace(b"CTRL0001", b"MLLP%04d" % i)))
                assert msa(ack)[0] == "AA"
        assert wait_until(lambda: len(list(out.glob("*.hl7"))) == 5)
        assert serve.stop() == 0
    # The HTTP requests were answered, not journaled or forwarded: only the MLLP messages went on.
    names = sorted(p.name for p in out.glob("*.hl7"))
    assert len(names) == 5 and all("MLLP" in n for n in names), names
    assert len(serve.records("http_request")) == 5


DOC_CURL = re.compile(r"<!-- curl-example[^>]*-->\n```sh\n(.*?)```", re.S)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_curl_example_of_docs_engines_md(tmp_path):
    command = DOC_CURL.search((REPO / "docs" / "engines.md").read_text(encoding="utf-8")).group(1)
    assert "http://127.0.0.1:8575/hl7" in command
    (tmp_path / "sample_messages").mkdir()
    shutil.copy(SAMPLES / "child_isolated_high_b12.hl7", tmp_path / "sample_messages")
    config = write_config(
        tmp_path / "config.toml",
        listener=dict(enabled=False),
        http=dict(enabled=True, port=0),
        logging=dict(format="json"),
    )
    with http_only(config) as serve:
        port = http_port(serve)
        done = subprocess.run(
            ["bash", "-c", command.replace(":8575/", f":{port}/")],
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )
        serve.stop(signal.SIGTERM)
    assert done.returncode == 0, done.stderr
    headers = done.stdout.decode("latin-1")
    assert headers.startswith("HTTP/1.1 200 OK")
    assert "X-B12comment-Decision: commented" in headers
    assert "Content-Type: application/hl7-v2; charset=UTF-8" in headers
    original = (SAMPLES / "child_isolated_high_b12.hl7").read_bytes()
    # The recipe writes into var/ (serve's own folder, ignored by git), never beside the checkout's files.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "sample_messages", "var"]
    processed = (tmp_path / "var" / "processed.hl7").read_bytes()
    nte = [s for s in processed.split(b"\r") if s.startswith(b"NTE|")]
    assert len(nte) == 1 and "forhøjet".encode() in nte[0]
    assert processed.replace(nte[0] + b"\r", b"", 1) == original


@pytest.mark.parametrize(
    "text, says",
    [
        ("[http]\nport = 70000\n", "[http.port] must be 0-65535"),
        ('[http]\npath = "hl7"\n', "[http.path]"),
        ('[http]\npath = "/metrics"\n', "[http.path]"),
        ("[http]\nmax_body_bytes = 0\n", "[http.max_body_bytes] must be greater than zero"),
        ("[http]\nrequest_timeout_s = -1\n", "[http.request_timeout_s]"),
        ('[http]\nallowed_peers = ["10.0.0.0/33"]\n', "[http.allowed_peers]"),
        ('[http]\ntls_cert = "a.pem"\n', "[http.tls_cert] and tls_key must be given together"),
        ('[http]\ntls_client_ca = "ca.pem"\n', "[http.tls_client_ca] needs tls_cert"),
        ('[http]\nenabled = "yes"\n', "[http.enabled] must be true or false"),
        ("[http]\nport_number = 1\n", "[http.port_number] is not a known setting"),
        ("[listener]\nenabled = false\n", "[listener.enabled] is false and [http] enabled is false"),
        ("[http]\nenabled = true\nport = 2575\n", "[http.port] is the same as [listener] port 2575"),
    ],
)
def test_bad_http_config_names_the_key(text, says):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.toml")
    assert str(info.value).startswith("site.toml: ") and says in str(info.value)


def test_serve_says_why_it_cannot_listen_for_http(tmp_path):
    config = write_config(
        tmp_path / "config.toml",
        listener=dict(enabled=False),
        http=dict(enabled=True, port=0, tls_cert=str(tmp_path / "missing.pem"), tls_key=str(tmp_path / "k.pem")),
    )
    done = subprocess.run(
        [sys.executable, "-m", "b12comment", "serve", "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    line = done.stderr.decode().strip().splitlines()[-1]
    assert line.startswith("b12comment: cannot read the TLS certificate file") and "missing.pem" in line


@pytest.mark.slow  # a replay subprocess over every case: about 4 s
def test_cornerstone_cases_come_back_from_http_as_replay_writes_them(tmp_path):
    """The same bytes and decisions through `b12comment replay` and the HTTP endpoint."""
    from http_helpers import Endpoint
    from test_rule_cases import CASES

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    messages = {}
    for cid, kw, *_ in CASES:
        messages[cid] = build(**kw)
        (inputs / f"{cid}.hl7").write_bytes(messages[cid])
    config = write_config(tmp_path / "config.toml", context=dict(mode="message"))
    done = subprocess.run(
        [sys.executable, "-m", "b12comment", "replay", str(inputs), "--out", str(out), "--config", str(config)]
        + ["--workers", "1", "--quiet", "--log-file", str(tmp_path / "decisions.jsonl")],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with Endpoint() as ep:
        conn = ep.connection()
        for (cid, kw, commented, *_), message in zip(CASES, messages.values(), strict=True):
            content_type = "application/hl7-v2" + ("" if kw.get("charset") else "; charset=US-ASCII")
            answer = post(conn, message, content_type)
            assert answer.body == (out / f"{cid}.hl7").read_bytes(), cid
            assert answer.headers["x-b12comment-decision"] == ("commented" if commented else "unchanged"), cid


@pytest.mark.slow  # 4,000 requests through serve: about 10 s
def test_http_soak_through_serve_with_the_context_store(tmp_path):
    """8 clients, 4,000 requests of many patients (commented, unchanged, not
    HL7) through serve with its default context store: every answer as
    process() gives it, memory flat, a clean stop."""
    import threading

    from b12comment.core.engine import process
    from b12comment.core.rule_config import RuleConfig

    config = write_config(
        tmp_path / "config.toml",
        listener=dict(enabled=False),
        http=dict(enabled=True, port=0),
        logging=dict(format="json"),
    )
    rule = RuleConfig()
    failures: list[str] = []

    def client(k: int, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(500):
            n = k * 1000 + i
            if i % 10 == 9:
                answer = post(conn, b"not HL7 %d\r" % n, "text/plain")
                if answer.headers.get("x-b12comment-decision") != "rejected":
                    failures.append(f"{n}: {answer.status}")
                continue
            patient = b"%010d" % n
            message = build(birth="19700101" if i % 3 == 0 else "20160315").replace(b"0101169999", patient)
            message = message.replace(b"|ORD1|FIL1|", b"|O%07d|F%07d|" % (n, n)).replace(b"CTRL0001", b"C%07d" % n)
            answer = post(conn, message, "application/hl7-v2; charset=US-ASCII")
            if answer.status != 200 or answer.body != process(message, rule)[0]:
                failures.append(f"{n}: {answer.status}")

    with http_only(config) as serve:
        port = http_port(serve)
        threads = [threading.Thread(target=client, args=(k, port)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        status = Path(f"/proc/{serve.proc.pid}/status").read_text().splitlines()
        rss_kb = int(next(line.split()[1] for line in status if line.startswith("VmHWM")))
        assert serve.stop() == 0
    assert failures == []
    assert len(serve.records("http_request")) == 4000
    assert rss_kb < 150_000, f"peak RSS {rss_kb} kB"
    assert (tmp_path / "var" / "context.sqlite3").exists()
