"""TLS and mutual TLS on the listener, with certificates made by trustme."""

from __future__ import annotations

import ssl

import pytest
import trustme
from service_helpers import MllpConnection, Serve, frame, msa, write_config

from b12comment.wire.tls import TlsError, client_context, server_context

MSG = b"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|TLS1|P|2.5.1\rOBX|1|NM|X||1\r"


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "server", "server_key", "client", "other_ca")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(files["server"]))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(files["server"]), append=True)
    server.private_key_pem.write_to_path(str(files["server_key"]))
    ca.issue_cert("sender.lab.example").private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    trustme.CA().issue_cert("sender.lab.example").private_key_and_cert_chain_pem.write_to_path(str(files["other_ca"]))
    return ca, files


def client_ctx(files, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files["ca"]))
    if cert:
        ctx.load_cert_chain(str(files[cert]))
    return ctx


def tls_config(tmp_path, files, mutual: bool):
    listener = dict(port=0, tls_cert=str(files["server"]), tls_key=str(files["server_key"]))
    if mutual:
        listener["tls_client_ca"] = str(files["ca"])
    return write_config(
        tmp_path / "config.toml",
        listener=listener,
        journal=dict(path=str(tmp_path / "j.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path}/out"),
    )


def plain_client_gets_no_ack(port: int) -> bool:
    with MllpConnection(port) as conn:
        conn.send_raw(frame(MSG))
        try:
            data = conn.sock.recv(65536)
        except (ConnectionError, TimeoutError):
            return True
        return b"MSA" not in data


def test_tls_listener_acks_a_tls_client_and_refuses_plain_tcp(tmp_path, pki):
    _, files = pki
    with Serve(tls_config(tmp_path, files, mutual=False)) as serve:
        with MllpConnection(serve.port, ssl_context=client_ctx(files)) as conn:
            assert msa(conn.send(MSG)) == ("AA", "TLS1")
        assert plain_client_gets_no_ack(serve.port)
        assert serve.wait_record("tls_handshake_failed")
        assert serve.stop() == 0
    assert any(r.get("tls") for r in serve.records("listening"))


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tmp_path, pki):
    _, files = pki
    with Serve(tls_config(tmp_path, files, mutual=True)) as serve:
        with MllpConnection(serve.port, ssl_context=client_ctx(files, "client")) as conn:
            assert msa(conn.send(MSG)) == ("AA", "TLS1")
        for cert in (None, "other_ca"):
            with (
                pytest.raises((ssl.SSLError, ConnectionError)),
                MllpConnection(serve.port, ssl_context=client_ctx(files, cert)) as conn,
            ):
                conn.send(MSG)  # TLS 1.3: the refusal shows on the first read
        assert plain_client_gets_no_ack(serve.port)
        assert serve.wait_record("tls_handshake_failed", 3)
        assert serve.stop() == 0
    assert [r["control_id"] for r in serve.records("decision")] == ["TLS1"]
    assert [r["client_cert"] for r in serve.records("connection_opened")] == ["sender.lab.example"]


def test_context_builders_name_the_bad_file(tmp_path, pki):
    _, files = pki
    assert (
        server_context(str(files["server"]), str(files["server_key"]), str(files["ca"])).verify_mode
        == ssl.CERT_REQUIRED
    )
    assert client_context(str(files["ca"]), str(files["client"])).verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(TlsError, match="nope.pem"):
        server_context(str(tmp_path / "nope.pem"), str(files["server_key"]))
    with pytest.raises(TlsError, match="server_key.pem"):
        client_context(ca=str(files["server_key"]))
