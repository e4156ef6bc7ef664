"""Diagnostics that name the problem: send shows the text of an AR's ERR; a
receiver answering without MLLP framing is named as such (send and the
forwarder); a certificate file that is not PEM is one line naming it; a
misspelt setting gets "did you mean"; `b12comment check-config` exits 0 or 2."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading

import pytest
import trustme
from service_helpers import SAMPLES, Downstream, MllpConnection, Serve, msa, subprocess_env, write_config

from b12comment.config import ConfigError, parse_config
from b12comment.wire.tls import TlsError, server_context

CHILD = (SAMPLES / "child_isolated_high_b12.hl7").read_bytes()


def b12(*args, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "b12comment", *map(str, args)],
        capture_output=True,
        input=input,
        timeout=60,
        env=subprocess_env(),
    )


# -- send and the forwarder: what the receiver said


def test_send_prints_the_err_text_of_an_ar(tmp_path):
    nak = (
        b"MSH|^~\\&|D|D|S|S|20240101||ACK|N1|P|2.5.1\rMSA|AR|S0001\r"
        b"ERR|||101^Required field missing^HL70357|E||||PID-3 patient identifier \\T\\ MRN missing\r"
    )
    with Downstream(answer=lambda i, payload: nak) as down:
        result = b12("send", SAMPLES / "child_isolated_high_b12.hl7", "--to", f"127.0.0.1:{down.port}")
    assert result.returncode == 3
    line = result.stdout.decode().splitlines()[0]
    assert " AR " in line and "error code 101; PID-3 patient identifier & MRN missing" in line, line


def test_send_prints_serves_own_err_text_for_a_v23_message(tmp_path):
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0, max_message_bytes=600),
        journal=dict(path=str(tmp_path / "j.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'out'}"),
        context=dict(store=str(tmp_path / "c.sqlite3"), key_file=str(tmp_path / "c.key")),
    )
    big = CHILD.replace(b"|2.5.1|", b"|2.3|").rstrip(b"\r") + b"\rNTE|1||" + b"x" * 800 + b"\r"
    (tmp_path / "big.hl7").write_bytes(big)
    with Serve(cfg) as serve:
        result = b12("send", tmp_path / "big.hl7", "--to", f"127.0.0.1:{serve.port}")
        assert serve.stop() == 0
    line = result.stdout.decode().splitlines()[0]
    assert " AR " in line and "error code 207; message of" in line and "over the limit of 600 bytes" in line, line


class Unframed:
    """A receiver that reads a frame and answers its ACK without MLLP framing."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\x1c\r" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                cid = data.split(b"|")[9] if data.count(b"|") > 9 else b""
                conn.sendall(b"MSH|^~\\&|D|D|S|S|20240101||ACK|U1|P|2.5.1\rMSA|AA|" + cid + b"\r")

    def close(self):
        self.stop = True
        self.sock.close()


def test_a_receiver_answering_without_mllp_framing_is_named_by_send():
    receiver = Unframed()
    try:
        result = b12(
            "send", SAMPLES / "child_isolated_high_b12.hl7", "--to", f"127.0.0.1:{receiver.port}", "--timeout", "3"
        )
    finally:
        receiver.close()
    out = result.stdout.decode()
    assert result.returncode == 3
    assert "answered without MLLP framing" in out and "closed the connection before answering" not in out, out


def test_a_downstream_answering_without_mllp_framing_is_named_by_the_forwarder(tmp_path):
    receiver = Unframed()
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "j.sqlite3")),
        downstream=dict(url=f"mllp://127.0.0.1:{receiver.port}", timeout_s=2, retry_initial_s=5, retry_max_s=5),
        context=dict(store=str(tmp_path / "c.sqlite3"), key_file=str(tmp_path / "c.key")),
    )
    try:
        with Serve(cfg) as serve:
            with MllpConnection(serve.port) as conn:
                assert msa(conn.send(CHILD))[0] == "AA"
            assert serve.wait_record("delivery_failed"), serve.stderr
            error = serve.records("delivery_failed")[0]["error"]
            assert serve.stop() == 0
    finally:
        receiver.close()
    assert "answered without MLLP framing" in error, error


# -- files and settings


def test_a_certificate_that_is_not_pem_is_one_line_naming_it(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("lab.example")
    der = tmp_path / "server.der"
    der.write_bytes(ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode()))
    key = tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key))
    with pytest.raises(TlsError) as info:
        server_context(str(der), str(key))
    text = str(info.value)
    assert str(der) in text and "PEM" in text and "DER" in text and "PEM lib" not in text, text
    assert "\n" not in text


@pytest.mark.parametrize(
    "toml, says",
    [
        ('[rule]\nlangauge = "en"\n', "[rule.langauge] is not a known setting; did you mean language?"),
        ("[listener]\nmax_conections = 3\n", "did you mean max_connections?"),
        ("[metrics]\nprot = 9000\n", "did you mean port?"),
        ("[listner]\nport = 1\n", "[listner] is not a known setting; did you mean listener?"),
        ("[listener]\nzzz = 1\n", "[listener.zzz] is not a known setting"),
    ],
)
def test_a_misspelt_setting_gets_did_you_mean(toml, says):
    with pytest.raises(ConfigError) as info:
        parse_config(toml, "site.toml")
    assert says in str(info.value)
    if "zzz" in toml:
        assert "did you mean" not in str(info.value)


def test_check_config_exits_0_for_a_good_file_and_2_naming_the_problem(tmp_path):
    from paths import REPO

    good = b12("check-config", "--config", REPO / "config.toml")
    assert good.returncode == 0 and good.stdout.decode().startswith("configuration ok: "), good
    assert b12("check-config", "--config", REPO / "deploy" / "config.toml").returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[listener]\nmax_conections = 3\n")
    result = b12("check-config", "--config", bad)
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        f"b12comment: configuration error: {bad}: [listener.max_conections] is not a known setting; "
        "did you mean max_connections?"
    )
    notpem = tmp_path / "cert.pem"
    notpem.write_text("not a certificate\n")
    tls = tmp_path / "tls.toml"
    tls.write_text(f'[listener]\ntls_cert = "{notpem}"\ntls_key = "{notpem}"\n')
    result = b12("check-config", "--config", tls)
    assert result.returncode == 2 and str(notpem) in result.stderr.decode() and "PEM" in result.stderr.decode()
