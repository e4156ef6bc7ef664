"""TLS contexts for the listener (server, optional client certificates) and
the downstream (client, optional client certificate), from config paths.

A file that cannot be loaded raises `TlsError` with a one-line reason, so
`serve` can say so and stop before it listens."""

from __future__ import annotations

import ssl

from b12comment.aio import describe_error
from b12comment.errors import EXIT_USAGE, B12Error


class TlsError(B12Error):
    """A TLS certificate, key or CA file that cannot be used: a setting that
    can never work, so the exit code is the one for usage and configuration."""

    exit_code = EXIT_USAGE


def server_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """For the listener; with `client_ca`, clients must present a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cert, key)
    if client_ca:
        _load_ca(ctx, client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """For an mllps:// downstream: verify it with `ca` (else the system store)."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca:
        _load_ca(ctx, ca)
    if cert:
        _load_chain(ctx, cert, key)
    return ctx


class _Encrypted(Exception):
    pass


def _no_passphrase():
    """Called by OpenSSL instead of prompting on the terminal for a passphrase."""
    raise _Encrypted()


def _check_pem(path: str, what: str) -> None:
    """One line naming the file when it cannot be read or is not PEM (DER, PKCS#12,
    a text file), instead of OpenSSL's '[SSL] PEM lib'."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError as exc:
        raise TlsError(f"cannot read the TLS {what} file {path}: {describe_error(exc)}") from None
    if b"-----BEGIN " not in head:
        kind = "DER or PKCS#12 (binary)" if b"\x00" in head[:4096] or head[:1] == b"\x30" else "not PEM"
        raise TlsError(
            f"the TLS {what} file {path} is {kind}: it needs PEM (text with -----BEGIN lines); "
            "convert it, e.g. openssl x509 -inform DER -in FILE -out FILE.pem"
        )


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    _check_pem(cert, "certificate")
    if key:
        _check_pem(key, "key")
    try:
        ctx.load_cert_chain(cert, key or None, password=_no_passphrase)
    except _Encrypted:
        raise TlsError(
            f"TLS key {key or cert} is protected by a passphrase; "
            "give a key file without one (readable only by the service user)"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS certificate {cert} with key {key or cert}: {describe_error(exc)}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    _check_pem(ca, "CA")
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS CA file {ca}: {describe_error(exc)}") from None
