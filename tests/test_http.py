"""HL7 over HTTP: the [http] endpoint, called with the standard library's
http.client over real sockets (the server runs in this process on its own
event loop thread; tests/test_http_serve.py runs it inside `serve`)."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time

import pytest
import trustme
from builders import Obx, build
from http_helpers import Endpoint, post, read
from paths import corpus_files, sample_files
from service_helpers import wait_until
from test_rule_cases import CASES

from b12comment.config import ContextConfig
from b12comment.core.decision import RULE_VERSION
from b12comment.core.engine import process
from b12comment.core.rule_config import RuleConfig
from b12comment.serve.processing import open_context

RULE = RuleConfig()
HL7_TYPES = ["application/hl7-v2", "application/hl7-v2+er7", "x-application/hl7-v2+er7", "text/plain"]


def nte(codec: str) -> bytes:
    return b"NTE|1|L|" + RULE.comment_text().encode(codec) + b"|RE\r"


def without(out: bytes, segment: bytes) -> bytes:
    assert out.count(segment) == 1, "the NTE is not in the output exactly once"
    return out.replace(segment, b"", 1)


@pytest.fixture(scope="module")
def ep():
    with Endpoint() as endpoint:
        yield endpoint


# -- content types and charsets


@pytest.mark.parametrize("media", HL7_TYPES)
@pytest.mark.parametrize("label, codec", [("UTF-8", "utf-8"), ("ISO-8859-1", "latin-1"), ("iso-8859-1", "latin-1")])
def test_every_content_type_and_charset_comes_back_byte_exact_plus_the_nte(ep, media, label, codec):
    # MSH-18 empty: only the HTTP charset says what the bytes are.
    message = build(patient_name="Ærø^Søren Åge", encoding=codec)
    assert "Ærø".encode(codec) in message
    conn = ep.connection()
    answer = post(conn, message, f"{media}; charset={label}")
    assert answer.status == 200
    assert answer.headers["content-type"] == f"{media}; charset={label.upper()}"
    assert answer.headers["x-b12comment-decision"] == "commented"
    assert without(answer.body, nte(codec)) == message  # byte for byte the input, plus the NTE
    assert "forhøjet".encode(codec) in answer.body and "Ærø".encode(codec) in answer.body
    conn.close()


def test_quoted_charset_and_upper_case_media_type(ep):
    message = build(patient_name="Ærø^Søren", encoding="utf-8")
    answer = post(ep.connection(), message, 'Application/HL7-v2; Charset="utf-8"')
    assert answer.status == 200
    assert without(answer.body, nte("utf-8")) == message


@pytest.mark.parametrize(
    "msh18, codec, label",
    [("8859/1", "latin-1", "ISO-8859-1"), ("UNICODE UTF-8", "utf-8", "UTF-8"), ("", "latin-1", "ISO-8859-1")],
)
def test_without_a_charset_parameter_msh18_then_iso_8859_1(ep, msh18, codec, label):
    message = build(charset=msh18, patient_name="Ærø^Søren", encoding=codec)
    answer = post(ep.connection(), message, "application/hl7-v2")
    assert answer.status == 200
    assert answer.headers["content-type"] == f"application/hl7-v2; charset={label}"
    assert without(answer.body, nte(codec)) == message


def test_charset_parameter_wins_over_msh18(ep):
    # The engine says UTF-8 on the wire although MSH-18 says 8859/1: the comment follows HTTP.
    message = build(charset="8859/1", patient_name="Ærø^Søren", encoding="utf-8")
    answer = post(ep.connection(), message, "application/hl7-v2; charset=UTF-8")
    assert without(answer.body, nte("utf-8")) == message


def test_us_ascii_gives_exactly_what_replay_gives(ep):
    message = build()
    answer = post(ep.connection(), message, "application/hl7-v2; charset=US-ASCII")
    assert answer.body == process(message, RULE)[0]
    assert b"forhoejet" in answer.body


# -- the decision headers


def test_decision_headers(ep):
    conn = ep.connection()
    commented = post(conn, build(), "application/hl7-v2; charset=UTF-8")
    assert commented.headers["x-b12comment-decision"] == "commented"
    assert commented.headers["x-b12comment-reasons"] == ""
    assert commented.headers["x-b12comment-rule"] == RULE_VERSION
    assert commented.headers["date"].endswith(" GMT")
    adult = build(birth="19700101")
    unchanged = post(conn, adult, "application/hl7-v2; charset=UTF-8")
    assert unchanged.body == adult
    assert unchanged.headers["x-b12comment-decision"] == "unchanged"
    assert unchanged.headers["x-b12comment-reasons"] == "adult"
    other = build(others=(Obx(code="718-7^Hemoglobin^LN", value="6.1", units="mmol/L", range="6.5-8.5", flags="L"),))
    assert post(conn, other).headers["x-b12comment-reasons"] == "other_abnormal"
    conn.close()


def test_non_hl7_body_gets_200_with_an_ack_ar_and_err(ep):
    answer = post(ep.connection(), b"hello, this is not HL7\r\n", "text/plain; charset=UTF-8")
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/plain; charset=UTF-8"
    assert answer.headers["x-b12comment-decision"] == "rejected"
    assert answer.headers["x-b12comment-reasons"] == "malformed"
    segments = answer.body.split(b"\r")
    assert segments[0].startswith(b"MSH|^~\\&|") and b"|ACK|" in segments[0]
    assert segments[1].startswith(b"MSA|AR|")
    assert segments[2].startswith(b"ERR|") and b"not an HL7 message" in segments[2]


def test_hl7_batch_comes_back_with_its_header_and_trailer(ep):
    one, two = build(), build(birth="19700101")
    batch = b"FHS|^~\\&|LAB\rBHS|^~\\&|LAB\r" + one + two + b"BTS|2\rFTS|1\r"
    answer = post(ep.connection(), batch, "application/hl7-v2; charset=UTF-8")
    assert answer.headers["x-b12comment-messages"] == "2"
    assert answer.headers["x-b12comment-decision"] == "commented"
    assert without(answer.body, nte("utf-8")) == batch


def test_the_decision_headers_agree_for_one_message_and_for_several(ep):
    """One message: Reasons is empty when commented. Several: Decision is
    commented when at least one was, Commented says how many of Messages,
    and Reasons holds the reasons of those left unchanged (empty when none was)."""
    child, adult = build(), build(birth="19700101", control_id="ADULT1")
    single = post(ep.connection(), child, "application/hl7-v2; charset=UTF-8")
    assert single.headers["x-b12comment-decision"] == "commented"
    assert single.headers["x-b12comment-reasons"] == ""
    assert single.headers["x-b12comment-commented"] == "1"
    mixed = post(ep.connection(), child + adult, "application/hl7-v2; charset=UTF-8")
    assert mixed.headers["x-b12comment-messages"] == "2"
    assert mixed.headers["x-b12comment-commented"] == "1"
    assert mixed.headers["x-b12comment-decision"] == "commented"
    assert mixed.headers["x-b12comment-reasons"] == "adult"
    both = post(ep.connection(), child + build(control_id="CHILD2"), "application/hl7-v2; charset=UTF-8")
    assert (both.headers["x-b12comment-commented"], both.headers["x-b12comment-reasons"]) == ("2", "")
    none = post(ep.connection(), adult, "application/hl7-v2; charset=UTF-8")
    assert none.headers["x-b12comment-decision"] == "unchanged"
    assert (none.headers["x-b12comment-commented"], none.headers["x-b12comment-reasons"]) == ("0", "adult")


# -- transport errors: non-2xx with a one-line reason


def one_line(answer) -> str:
    text = answer.body.decode("utf-8")
    assert answer.headers["content-type"].startswith("text/plain")
    assert text.endswith("\n") and text.count("\n") == 1 and len(text) > 10, text
    return text


def test_missing_body_is_400(ep):
    answer = post(ep.connection(), b"")
    assert answer.status == 400
    assert "no body" in one_line(answer)


@pytest.mark.parametrize(
    "content_type, says",
    [
        ("application/json", "content type 'application/json'"),
        (None, "no Content-Type"),
        ("application/hl7-v2+xml", "content type"),
        ("application/hl7-v2; charset=UTF-16", "charset 'UTF-16' is not supported"),
        ("application/hl7-v2; charset=no-such-set", "is not supported"),
    ],
)
def test_unsupported_content_type_or_charset_is_415(ep, content_type, says):
    answer = post(ep.connection(), build(), content_type)
    assert answer.status == 415
    assert says in one_line(answer)


@pytest.mark.parametrize("method, path", [("GET", "/hl7"), ("PUT", "/hl7"), ("POST", "/metrics"), ("POST", "/healthz")])
def test_wrong_method_is_405_with_allow(ep, method, path):
    conn = ep.connection()
    conn.request(method, path, body=b"x" if method != "GET" else None)
    answer = read(conn)
    assert answer.status == 405
    assert answer.headers["allow"] == ("POST" if path == "/hl7" else "GET")
    one_line(answer)


def test_unknown_path_is_404(ep):
    answer = post(ep.connection(), build(), path="/elsewhere")
    assert answer.status == 404
    assert "/hl7" in one_line(answer)


def test_body_over_the_limit_is_413_without_reading_it():
    with Endpoint(max_body_bytes=1000) as small:
        answer = post(small.connection(), build() + b"OBX|9|ST|X||" + b"y" * 2000 + b"\r")
        assert answer.status == 413
        assert "limit of 1000 bytes" in one_line(answer)
        # chunked: no Content-Length, the limit is found while it streams
        conn = small.connection()
        conn.request(
            "POST", "/hl7", body=iter([b"MSH|^~\\&|" + b"z" * 600] * 4), headers={"Content-Type": "text/plain"}
        )
        answer = read(conn)
        assert answer.status == 413
        one_line(answer)
        assert post(small.connection(), b"MSH|^~\\&|A\r").status == 200  # and keeps serving


def test_peer_not_allowed_is_403():
    with Endpoint(allowed_peers=("10.99.0.0/16",)) as closed:
        answer = post(closed.connection(), build())
        assert answer.status == 403
        assert "allowed_peers" in one_line(answer)
    with Endpoint(allowed_peers=("127.0.0.0/8",)) as open_:
        assert post(open_.connection(), build()).status == 200


def test_chunked_request_body_is_read(ep):
    message = build(birth="19700101")
    conn = ep.connection()
    conn.request("POST", "/hl7", body=iter([message[:50], message[50:]]), headers={"Content-Type": "text/plain"})
    answer = read(conn)
    assert answer.status == 200 and answer.body == message


def test_expect_100_continue_is_honoured(ep):
    message = build(birth="19700101")
    with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as s:
        s.sendall(
            b"POST /hl7 HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(message)
        )
        assert s.recv(100).startswith(b"HTTP/1.1 100 ")
        s.sendall(message)
        reply = b""
        while not reply.endswith(message):
            chunk = s.recv(65536)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")


def test_keep_alive_many_requests_on_one_connection(ep):
    conn = ep.connection()
    for i in range(20):
        message = build(birth="19700101" if i % 2 else "20160315")
        answer = post(conn, message, "application/hl7-v2; charset=US-ASCII")
        assert answer.body == process(message, RULE)[0]
    conn.close()


def test_healthz_and_metrics_with_per_endpoint_counts_and_latency(ep):
    conn = ep.connection()
    post(conn, build())
    conn.request("GET", "/healthz")
    health = read(conn)
    assert health.status == 200 and health.body == b"ok\n"
    conn.request("GET", "/metrics")
    text = read(conn).body.decode()
    assert 'b12comment_http_requests_total{endpoint="/hl7",status="200"}' in text
    assert 'b12comment_http_requests_total{endpoint="/healthz",status="200"} 1' in text
    assert 'b12comment_http_decisions_total{decision="commented"}' in text
    assert 'b12comment_http_request_seconds_bucket{endpoint="/hl7",le="+Inf"}' in text
    assert 'b12comment_http_request_seconds_count{endpoint="/hl7"}' in text
    assert "b12comment_ack_seconds_count 0" in text  # the MLLP histograms are unchanged


def test_request_log_has_the_decision_and_no_patient_data(ep):
    message = build(patient_name="Hemmeligsen^Ulla")
    post(ep.connection(), message)
    record = [r for r in ep.log.events("http_request") if r.get("control_id") and r.get("commented")][-1]
    assert record["status"] == 200 and record["endpoint"] == "/hl7" and record["rule_version"] == RULE_VERSION
    assert "Hemmeligsen" not in repr(ep.log.records)


# -- slow and many clients


@pytest.mark.slow
def test_slow_client_trickling_headers_gets_408_and_others_are_served():
    with Endpoint(request_timeout_s=1.0) as ep, socket.create_connection(("127.0.0.1", ep.port), timeout=10) as slow:
        slow.sendall(b"POST /hl7 HTTP/1.1\r\n")
        started = time.monotonic()
        reply = b""
        for _ in range(40):  # one header byte every 0.1 s, never the end of the headers
            try:
                slow.sendall(b"X")
            except OSError:
                break
            answer = post(ep.connection(), build(birth="19700101"))  # meanwhile: answered
            assert answer.status == 200
            slow.settimeout(0.1)
            try:
                reply += slow.recv(4096)
            except TimeoutError:
                continue
            if reply.endswith(b"\n") and b"\r\n\r\n" in reply:
                break
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert time.monotonic() - started < 10
        slow.settimeout(5)
        assert slow.recv(100) == b""  # and closed


@pytest.mark.slow
def test_idle_keep_alive_connection_is_closed():
    with Endpoint(idle_timeout_s=0.3) as ep:
        conn = ep.connection()
        post(conn, build())
        time.sleep(0.8)
        assert conn.sock.recv(10) == b""


@pytest.mark.slow
def test_200_concurrent_connections_while_good_requests_are_answered():
    with Endpoint(request_timeout_s=20.0) as ep:
        hogs = []
        try:
            for i in range(200):
                s = socket.create_connection(("127.0.0.1", ep.port), timeout=10)
                s.sendall(b"POST /hl7 HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"")
                hogs.append(s)
            message = build()
            expected = process(message, RULE)[0]
            results: list[int] = []

            def client():
                conn = ep.connection(timeout=20)
                for _ in range(5):
                    answer = post(conn, message, "text/plain; charset=US-ASCII")
                    results.append(answer.status if answer.body == expected else -1)

            threads = [threading.Thread(target=client) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert results == [200] * 40
        finally:
            for s in hogs:
                s.close()


def test_connections_beyond_max_connections_get_503():
    with Endpoint(max_connections=3) as ep:
        hogs = [socket.create_connection(("127.0.0.1", ep.port), timeout=10) for _ in range(3)]
        try:
            time.sleep(0.2)
            answer = post(ep.connection(), build())
            assert answer.status == 503
            assert answer.headers["retry-after"] == "1"
        finally:
            for s in hogs:
                s.close()
        time.sleep(0.2)
        assert post(ep.connection(), build()).status == 200


@pytest.mark.slow
def test_large_body_comes_back_byte_exact():
    # Under MAX_SEGMENTS (a message of more segments is not read), over 1 MB.
    name = "Analyte with a long name " + "x" * 80
    others = tuple(Obx(code=f"{i}^{name} {i}^L", value="5", units="U/L", range="1-9", flags="N") for i in range(9000))
    message = build(others=others)
    assert len(message) > 1_000_000
    with Endpoint(max_body_bytes=4 * 1024 * 1024) as ep:
        answer = post(ep.connection(), message, "application/hl7-v2; charset=UTF-8")
        assert answer.status == 200
        assert answer.headers["x-b12comment-decision"] == "commented"
        assert without(answer.body, nte("utf-8")) == message


# -- TLS and mutual TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    files = {name: tmp / f"{name}.pem" for name in ("ca", "server", "server_key", "client", "stranger")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(files["server_key"]))
    for i, pem in enumerate(server.cert_chain_pems):
        pem.write_to_path(str(files["server"]), append=i > 0)
    ca.issue_cert("engine.hospital.example").private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    trustme.CA().issue_cert("engine.hospital.example").private_key_and_cert_chain_pem.write_to_path(
        str(files["stranger"])
    )
    return files


def client_ctx(files, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files["ca"]))
    if cert:
        ctx.load_cert_chain(str(files[cert]))
    return ctx


def test_https_answers_a_tls_client_and_not_plain_http(pki):
    with Endpoint(tls_cert=str(pki["server"]), tls_key=str(pki["server_key"])) as ep:
        answer = post(ep.connection(context=client_ctx(pki)), build())
        assert answer.status == 200 and answer.headers["x-b12comment-decision"] == "commented"
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            post(ep.connection(timeout=5), build())
        assert wait_until(lambda: ep.log.events("tls_handshake_failed"))


def test_mutual_tls_refuses_a_client_without_a_certificate_or_with_a_strangers(pki):
    cfg = dict(tls_cert=str(pki["server"]), tls_key=str(pki["server_key"]), tls_client_ca=str(pki["ca"]))
    with Endpoint(**cfg) as ep:
        assert post(ep.connection(context=client_ctx(pki, "client")), build()).status == 200
        for who in (None, "stranger"):
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
                post(ep.connection(timeout=5, context=client_ctx(pki, who)), build())
        assert wait_until(lambda: len(ep.log.events("tls_handshake_failed")) == 2)


# -- the corpus and the cornerstone cases through HTTP


def test_all_corpus_messages_come_back_byte_identical(ep):
    files = corpus_files()
    if not files:
        pytest.skip("corpus not present at ../shared/corpus/messages")
    assert len(files) == 139
    conn = ep.connection()
    for path in files:
        message = path.read_bytes()
        answer = post(conn, message, "application/hl7-v2")
        assert answer.status == 200, path.name
        assert answer.body == message, path.name
        assert answer.headers["x-b12comment-decision"] == "unchanged", path.name
    conn.close()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cornerstone_cases_decide_the_same_through_http_as_through_process(ep, case):
    _, kw, commented, reasons, _ = case
    message = build(**kw)
    out, decision = process(message, RULE)
    # MSH-18 empty is ASCII to process(); over HTTP, say so (else ISO-8859-1 is assumed)
    content_type = "application/hl7-v2" + ("" if kw.get("charset") else "; charset=US-ASCII")
    answer = post(ep.connection(), message, content_type)
    assert answer.status == 200
    assert answer.headers["x-b12comment-decision"] == ("commented" if commented else "unchanged")
    assert answer.headers["x-b12comment-reasons"] == ",".join(decision.reasons) == ",".join(reasons)
    assert answer.body == out


# -- the patient's context: every request reads and updates it, none is held


# `alone`: the server alone on its event loop (serve without the MLLP
# listener) decides a lone request on the loop, not on its worker thread:
# the same decisions, committed before each answer, in order.
@pytest.mark.parametrize("alone", [False, True], ids=["beside-the-listener", "alone"])
def test_context_store_vetoes_a_b12_after_an_abnormal_blood_count_of_the_same_patient(tmp_path, alone):
    store = tmp_path / "context.sqlite3"
    stage = open_context(ContextConfig(store=str(store), key_file=str(tmp_path / "context.key")))
    low_hb = Obx(code="718-7^Hemoglobin^LN", value="6.1", units="mmol/L", range="6.5-8.5", flags="L")
    blood_count = build(with_b12=False, others=(low_hb,)).replace(b"CTRL0001", b"CBC00001")
    b12 = build(patient_name="Hemmeligsen^Ulla").replace(b"CTRL0001", b"B12C0001")
    other_child = build(birth="20170101").replace(b"0101169999", b"0202179999").replace(b"CTRL0001", b"B12C0002")
    other_child = other_child.replace(b"|ORD1|FIL1|", b"|ORD9|FIL9|")  # and another requisition
    with Endpoint(context=stage, alone=alone) as ep:
        conn = ep.connection()
        assert post(conn, blood_count).headers["x-b12comment-decision"] == "unchanged"
        vetoed = post(conn, b12)
        assert vetoed.status == 200 and vetoed.body == b12
        assert vetoed.headers["x-b12comment-decision"] == "unchanged"
        assert vetoed.headers["x-b12comment-reasons"] == "other_abnormal_recent"
        # another patient: commented, decided at once
        assert post(conn, other_child).headers["x-b12comment-decision"] == "commented"
    assert b"Hemmeligsen" not in store.read_bytes() and b"0101169999" not in store.read_bytes()


def test_a_lone_request_decided_on_the_loop_is_answered_after_its_rows_are_committed(tmp_path):
    import sqlite3

    store = tmp_path / "context.sqlite3"
    stage = open_context(ContextConfig(store=str(store), key_file=str(tmp_path / "context.key")))
    rows = []
    with Endpoint(context=stage, alone=True) as ep:
        conn = ep.connection()
        for i in range(3):  # one at a time: each decided alone, on the loop
            message = build().replace(b"CTRL0001", b"CTRL%04d" % i).replace(b"|ORD1|FIL1|", b"|ORD%d|FIL%d|" % (i, i))
            assert post(conn, message).headers["x-b12comment-decision"] == "commented"
            other = sqlite3.connect(store)  # another connection: what is committed
            rows.append(other.execute("SELECT COUNT(*) FROM results").fetchone()[0])
            other.close()
    assert 0 < rows[0] < rows[1] < rows[2]


def test_context_review_alert_for_a_later_abnormal_result_through_http(tmp_path):
    stage = open_context(ContextConfig(store=str(tmp_path / "c.sqlite3"), key_file=str(tmp_path / "c.key")))
    b12 = build()
    later = build(
        with_b12=False, others=(Obx(code="1742-6^ALT^LN", value="90", units="U/L", range="10-45", flags="H"),)
    )
    with Endpoint(context=stage) as ep:
        conn = ep.connection()
        assert post(conn, b12).headers["x-b12comment-decision"] == "commented"
        post(conn, later.replace(b"CTRL0001", b"ALT00001"))
        alerts = ep.log.events("comment_contradicted")
        assert [(a["comment_control_id"], a["control_id"]) for a in alerts] == [("CTRL0001", "ALT00001")]
        assert ep.metrics.value("b12comment_comments_contradicted_total") == 1


def read_responses(s: socket.socket, count: int) -> list[bytes]:
    """Raw responses off a socket, each with its Content-Length body."""
    data, out = b"", []
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, (out, data)
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        while len(data) < length:
            data += s.recv(65536)
        out.append(head + b"\r\n\r\n" + data[:length])
        data = data[length:]
    return out


def test_pipelined_requests_are_answered_in_order(ep):
    one, two = build(birth="19700101"), build(birth="19800101").replace(b"CTRL0001", b"CTRL0002")
    request = b"POST /hl7 HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as s:
        s.sendall(request % len(one) + one + request % len(two) + two)
        first, second = read_responses(s, 2)
    assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(one)
    assert second.startswith(b"HTTP/1.1 200 OK") and second.endswith(two)


def test_bad_http_is_400_and_the_server_keeps_serving(ep):
    with socket.create_connection(("127.0.0.1", ep.port), timeout=10) as s:
        s.sendall(b"this is not HTTP\r\n\r\n")
        (reply,) = read_responses(s, 1)
    assert reply.startswith(b"HTTP/1.1 400 ") and b"bad HTTP request" in reply
    assert post(ep.connection(), build()).status == 200


def test_the_one_message_fast_path_cuts_bodies_as_replay_does():
    from b12comment.serve.http import _pieces
    from b12comment.wire.split import split_messages

    bodies = [p.read_bytes() for p in corpus_files() + sample_files()]
    bodies += [build(), build() + build(), b"MSH|^~\\&|A\rMSH|^~\\&|B\r", b"MSH|^~\\&|A\rBTS|1\r", b" MSH|x", b""]
    for body in bodies:
        assert _pieces(body) == split_messages(body)


def test_stop_closes_connections_waiting_for_a_request_and_finishes_the_one_in_hand():
    ep = Endpoint(request_timeout_s=60.0, idle_timeout_s=60.0).__enter__()
    idle = ep.connection()
    assert post(idle, build()).status == 200  # kept alive, waiting for its next request
    trickling = socket.create_connection(("127.0.0.1", ep.port), timeout=10)
    trickling.sendall(b"POST /hl7 HTTP/1.1\r\nHost: x\r\n")  # half a request
    time.sleep(0.2)
    started = time.monotonic()
    ep.__exit__(None, None, None)
    assert time.monotonic() - started < 5  # not the 60 s timeouts
    assert trickling.recv(100) == b"" and idle.sock.recv(100) == b""
    trickling.close()


@pytest.mark.parametrize("alone", [False, True], ids=["beside-the-listener", "alone"])
def test_concurrent_requests_with_the_context_store_are_decided_in_order_and_committed(tmp_path, alone):
    """Eight clients at once, each a patient of its own: a blood count (low
    for every other patient), then that patient's B12. Requests waiting for
    the store are decided together: each B12 still sees its own patient's
    blood count, and every row is in the store (committed) when its answer
    comes; a client that gives up its request holds back nobody."""
    import sqlite3

    store = tmp_path / "context.sqlite3"
    stage = open_context(ContextConfig(store=str(store), key_file=str(tmp_path / "context.key")))
    low_hb = Obx(code="718-7^Hemoglobin^LN", value="6.1", units="mmol/L", range="6.5-8.5", flags="L")
    normal_hb = Obx(code="718-7^Hemoglobin^LN", value="7.1", units="mmol/L", range="6.5-8.5")

    def messages(i: int) -> tuple[bytes, bytes]:
        pid, req = f"01011{i:04d}".encode(), f"|ORD{i}|FIL{i}|".encode()
        count = build(with_b12=False, others=(low_hb if i % 2 else normal_hb,))
        count = count.replace(b"0101169999", pid).replace(b"|ORD1|FIL1|", req).replace(b"CTRL0001", f"CBC{i}".encode())
        b12 = build().replace(b"0101169999", pid).replace(b"CTRL0001", f"B12-{i}".encode())
        return count, b12

    answers: dict[int, str] = {}
    errors: list[BaseException] = []
    with Endpoint(context=stage, alone=alone) as ep:

        def client(i: int) -> None:
            try:
                count, b12 = messages(i)
                conn = ep.connection()
                post(conn, count)
                answers[i] = post(conn, b12).headers["x-b12comment-decision"]
                rows = sqlite3.connect(store).execute("SELECT COUNT(*) FROM results").fetchone()[0]
                assert rows >= 4  # at least this client's own rows, committed before its answer
            except BaseException as exc:
                errors.append(exc)

        def gives_up() -> None:
            with socket.create_connection(("127.0.0.1", ep.port)) as s:
                body = messages(99)[1]
                s.sendall(b"POST /hl7 HTTP/1.1\r\nHost: x\r\nContent-Type: application/hl7-v2\r\n")
                s.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        threads.append(threading.Thread(target=gives_up))
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert answers == {i: "unchanged" if i % 2 else "commented" for i in range(8)}
