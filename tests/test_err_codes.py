"""ERR segments a person and a machine can read: each kind of bad input gets
its HL7 table 0357 code (not 100 for everything) and a plain-text reason
(never a Python bytes repr); UTF-16 input is named as such. Over a real
MLLP connection to `serve`, and through the HTTP endpoint."""

from __future__ import annotations

import hl7
import pytest
from http_helpers import Endpoint, post
from service_helpers import MllpConnection, Serve, write_config

from b12comment.core.segments import Malformed, read_header

CHILD = (
    "MSH|^~\\&|LAB|RH|EPJ|RH|20240301120000||ORU^R01^ORU_R01|KID-1|P|2.5.1\r"
    "PID|1||0101151234^^^CPR||Jensen^Anna||20150101|F\r"
    "OBX|1|NM|14685-2^Cobalamin^LN||1500|pmol/L|200-600|H|||F\r"
)

# (frame, the 0357 code, words the text must hold)
CASES = [
    (b"hello, this is no HL7", "100", "does not start with an MSH segment"),
    (b"PID|1||0101151234^^^CPR\r", "100", "it starts with PID"),
    (b"FHS|^~\\&|LAB\rBHS|^~\\&\r" + CHILD.encode() + b"BTS|1\rFTS|1\r", "100", "each message in its own frame"),
    (CHILD.encode("utf-16-le"), "102", "UTF-16LE"),
    (b"\xff\xfe" + CHILD.encode("utf-16-le"), "102", "UTF-16LE"),
    (CHILD.encode("utf-16-be"), "102", "UTF-16BE"),
    (b"MSH|#\\S\\\\R\\\\E\\\\E\\@#SendingApp#\r", "102", "MSH-2 encoding characters"),
    (b"MSHA^~\\&|LAB\r", "102", "MSH-1 field separator"),
]


def err_of(ack: bytes) -> tuple[str, str, str]:
    """(MSA-1, ERR-3.1, ERR-8) read by python-hl7, another reader than ours."""
    msg = hl7.parse(ack.decode("latin-1"))
    err = msg.segment("ERR")
    return str(msg.segment("MSA")[1]), str(err[3][0][0]), str(err[8])


@pytest.mark.parametrize("frame, code, says", CASES, ids=[c[1] + ":" + c[2][:20] for c in CASES])
def test_malformed_names_the_0357_code_in_plain_text(frame, code, says):
    with pytest.raises(Malformed) as info:
        read_header(frame)
    if b"FHS" not in frame[:3]:
        assert info.value.code == code
        assert says in str(info.value)
    assert "b'" not in str(info.value) and 'b"' not in str(info.value)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("err")
    cfg = write_config(
        base / "config.toml",
        listener=dict(port=0, max_message_bytes=2000),
        journal=dict(path=str(base / "journal.sqlite3")),
        downstream=dict(url=f"dir:{base / 'outbox'}"),
        context=dict(store=str(base / "context.sqlite3"), key_file=str(base / "context.key")),
    )
    with Serve(cfg) as serve:
        yield serve
        assert serve.stop() == 0


@pytest.mark.parametrize("frame, code, says", CASES, ids=[c[1] + ":" + c[2][:20] for c in CASES])
def test_serve_answers_ar_with_the_code_and_a_readable_text(served, frame, code, says):
    with MllpConnection(served.port) as conn:
        ack = conn.send(frame)
    ack_code, err_code, text = err_of(ack)
    assert (ack_code, err_code) == ("AR", code), ack
    assert says in text.replace("\\F\\", "|").replace("\\E\\", "\\"), text
    assert "b'" not in text and "\\x" not in text, text


def test_an_oversized_frame_is_207_application_internal_error(served):
    with MllpConnection(served.port) as conn:
        ack = conn.send(CHILD.encode() + b"NTE|1||" + b"x" * 3000 + b"\r")
    ack_code, err_code, text = err_of(ack)
    assert (ack_code, err_code) == ("AR", "207")
    assert "over the limit of 2000 bytes" in text


@pytest.mark.parametrize("frame, code, says", CASES[:2] + CASES[3:4], ids=["100", "100-pid", "102-utf16"])
def test_the_http_endpoint_gives_the_same_codes(frame, code, says):
    with Endpoint() as ep:
        answer = post(ep.connection(), frame, "application/hl7-v2; charset=ISO-8859-1")
    assert answer.status == 200 and answer.headers["x-b12comment-decision"] == "rejected"
    ack_code, err_code, text = err_of(answer.body)
    assert (ack_code, err_code) == ("AR", code)
    assert says in text
