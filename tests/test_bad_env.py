"""Bad configuration and a bad environment, through real `python -m b12comment`
subprocesses: each gives one clear error line on stderr and a non-zero exit
(or, for a journal that cannot be written, an AE for every message) - never
a traceback, never a silent start.

Tests run as root here, so file permissions stop nothing: unreadable inputs
are made with a directory where a file is expected, invalid UTF-8, a file
whose read fails with EIO (/proc/self/mem), a path under a regular file, and
read-only or full filesystems (small tmpfs mounts; skipped when mount is not
permitted).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
from disk_helpers import remount, tmpfs
from service_helpers import (
    SAMPLES,
    MllpConnection,
    Serve,
    free_port,
    msa,
    msh10,
    subprocess_env,
    wait_until,
    write_config,
)

SAMPLE = SAMPLES / "child_isolated_high_b12.hl7"


def cli(*args, cwd: Path, stdin=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "b12comment", *map(str, args)],
        cwd=cwd,
        env=subprocess_env(),
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


def _is_log_record(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def error_lines(stderr: bytes | str) -> list[str]:
    """stderr lines that are not structlog JSON records."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    return [line for line in text.splitlines() if line.strip() and not _is_log_record(line)]


def assert_one_clear_error(proc, code: int, *must_name: str) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert proc.returncode == code, (proc.returncode, err)
    lines = error_lines(err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("b12comment"), lines
    for name in must_name:
        assert name in lines[0], (name, lines[0])
    assert not any('"listening"' in line for line in err.splitlines()), "serve started anyway"
    return lines[0]


def base_config(tmp_path: Path, name: str = "config.toml", **sections) -> Path:
    tables = dict(
        listener=dict(port=0),
        journal=dict(path=str(tmp_path / "journal.sqlite3")),
        downstream=dict(url=f"dir:{tmp_path / 'outbox'}"),
    )
    for key, values in sections.items():
        tables[key] = {**tables.get(key, {}), **values}
    return write_config(tmp_path / name, **tables)


# --------------------------------------------------------------------------
# The configuration file itself


def test_missing_config(tmp_path):
    proc = cli("serve", "--config", tmp_path / "nope.toml", cwd=tmp_path)
    assert_one_clear_error(proc, 2, "nope.toml", "not found")


def test_config_that_is_a_directory(tmp_path):
    (tmp_path / "conf.d").mkdir()
    proc = cli("serve", "--config", tmp_path / "conf.d", cwd=tmp_path)
    assert_one_clear_error(proc, 2, "conf.d", "cannot read config file")


def test_config_that_is_not_utf8(tmp_path):
    (tmp_path / "latin.toml").write_bytes(b'[rule]\ntext_da = "Isoleret forh\xf8jet B12"\n')
    proc = cli("serve", "--config", tmp_path / "latin.toml", cwd=tmp_path)
    assert_one_clear_error(proc, 2, "latin.toml", "utf-8")


def test_config_whose_read_fails_with_eio(tmp_path):
    if not _eio_file_works():
        pytest.skip("/proc/self/mem does not fail with EIO on this platform")
    proc = cli("serve", "--config", "/proc/self/mem", cwd=tmp_path)
    assert_one_clear_error(proc, 2, "/proc/self/mem", "cannot read config file")


@pytest.mark.parametrize(
    "text, names",
    [
        ("[listener]\nport = 2575\n[listener]\nhost = 'x'\n", "not valid TOML"),
        ('[listener]\nport = "2575"\n', "[listener.port] must be an integer"),
        ("[listener]\nport = true\n", "[listener.port] must be an integer, not a boolean"),
        ("[listener]\nport = 2575.5\n", "[listener.port] must be an integer"),
        ("[listener]\nport = 65536\n", "[listener.port] must be 0-65535"),
        ("[listener]\nprot = 2575\n", "[listener.prot] is not a known setting"),
        ("[listener]\nmax_connections = 0\n", "[listener.max_connections] must be greater than zero"),
        ("[listener]\nidle_timeout_s = -1\n", "[listener.idle_timeout_s] must be greater than zero"),
        ('[listener]\nallowed_peers = "127.0.0.1"\n', "[listener.allowed_peers] must be a list"),
        ('[listener]\nallowed_peers = ["127.0.0.1", 10]\n', "[listener.allowed_peers] must be a list of strings"),
        ('[listener]\nallowed_peers = ["lab.example"]\n', "[listener.allowed_peers] has 'lab.example'"),
        ('[listener]\ntls_cert = "c.pem"\n', "[listener.tls_cert] and tls_key must be given together"),
        ('[listener]\ntls_client_ca = "ca.pem"\n', "[listener.tls_client_ca] needs tls_cert"),
        ("listener = 5\n", "[listener] must be a table"),
        ('[journal]\npath = ""\n', "[journal.path] must not be empty"),
        ('[journal]\nretention_days = "7"\n', "[journal.retention_days] must be a number"),
        ('[downstream]\nurl = "mllp://lab"\n', "[downstream.url] must be mllp://host:port"),
        ("[downstream]\nmax_attempts = 2.5\n", "[downstream.max_attempts] must be an integer"),
        ("[metrics]\nport = -1\n", "[metrics.port] must be 0-65535"),
        ('[logging]\nlevel = "verbose"\n', "[logging.level] must be debug, info, warning or error"),
        ("[logging]\npatient_data = 1\n", "[logging.patient_data] must be true or false"),
        ("[rule]\ncodes = []\n", "[rule.codes] must list at least one code"),
        ('[rule]\ncodes = [{code = "14685 2"}]\n', "[rule.codes[1].code]"),
        ('[rule]\nlanguage = "de"\n', '[rule.language] must be "da" or "en"'),
        ('[rule.units]\n"pg/mL" = 0\n', "[rule.units.pg/mL] must be a number above 0"),
    ],
)
def test_config_with_wrong_values_stops_serve_naming_file_and_key(tmp_path, text, names):
    (tmp_path / "site.toml").write_text(text, encoding="utf-8")
    proc = cli("serve", "--config", tmp_path / "site.toml", cwd=tmp_path)
    line = assert_one_clear_error(proc, 2, "site.toml", names)
    assert line.startswith("b12comment: configuration error: ")
    assert proc.stdout == b""


@pytest.mark.parametrize(
    "text, key",
    [
        ("[listener]\nidle_timeout_s = nan\n", "listener.idle_timeout_s"),
        ("[downstream]\nretry_initial_s = nan\n", "downstream.retry_initial_s"),
        ("[rule]\nage_bands = [{below_years = 18, upper_limit_pmol_l = nan}]\n", "upper_limit_pmol_l"),
        ('[rule.units]\n"pg/mL" = nan\n', "rule.units.pg/mL"),
    ],
)
def test_nan_in_config_is_refused(tmp_path, text, key):
    (tmp_path / "site.toml").write_text(text, encoding="utf-8")
    proc = cli("preview", SAMPLES / "infant_high_b12_no_range.hl7", "--config", tmp_path / "site.toml", cwd=tmp_path)
    assert_one_clear_error(proc, 2, "site.toml", key)


# --------------------------------------------------------------------------
# TLS files


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    d = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    server.private_key_pem.write_to_path(str(d / "key.pem"))
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(d / "other_key.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    (d / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    (d / "empty.pem").write_bytes(b"")
    (d / "a_dir.pem").mkdir()
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((d / "key.pem").read_bytes(), None)
    (d / "encrypted_key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return d


@pytest.mark.parametrize(
    "section, files, named",
    [
        ("listener", dict(tls_cert="garbage.pem", tls_key="key.pem"), "garbage.pem"),
        ("listener", dict(tls_cert="empty.pem", tls_key="key.pem"), "empty.pem"),
        ("listener", dict(tls_cert="cert.pem", tls_key="garbage.pem"), "garbage.pem"),
        ("listener", dict(tls_cert="cert.pem", tls_key="other_key.pem"), "other_key.pem"),
        ("listener", dict(tls_cert="cert.pem", tls_key="a_dir.pem"), "a_dir.pem"),
        ("listener", dict(tls_cert="cert.pem", tls_key="key.pem", tls_client_ca="garbage.pem"), "garbage.pem"),
        ("listener", dict(tls_cert="cert.pem", tls_key="key.pem", tls_client_ca="missing.pem"), "missing.pem"),
        ("downstream", dict(url="mllps://127.0.0.1:9", tls_ca="garbage.pem"), "garbage.pem"),
        (
            "downstream",
            dict(url="mllps://127.0.0.1:9", tls_ca="ca.pem", tls_cert="cert.pem", tls_key="other_key.pem"),
            "other_key.pem",
        ),
    ],
)
def test_bad_tls_file_stops_serve_naming_the_file(tmp_path, pem, section, files, named):
    values = {k: (str(pem / v) if k.startswith("tls_") else v) for k, v in files.items()}
    cfg = base_config(tmp_path, **{section: values})
    proc = cli("serve", "--config", cfg, cwd=tmp_path)
    assert_one_clear_error(proc, 2, named, "TLS")


def test_encrypted_tls_key_is_one_clear_line_without_a_prompt(tmp_path, pem):
    cfg = base_config(tmp_path, listener=dict(tls_cert=str(pem / "cert.pem"), tls_key=str(pem / "encrypted_key.pem")))
    proc = subprocess.run(
        [sys.executable, "-m", "b12comment", "serve", "--config", str(cfg)],
        cwd=tmp_path,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        start_new_session=True,
    )  # no controlling terminal
    line = assert_one_clear_error(proc, 2, "encrypted_key.pem")
    assert "encrypt" in line.lower() or "pass" in line.lower()


# --------------------------------------------------------------------------
# Addresses


def test_metrics_port_in_use_stops_serve_and_releases_the_listener(tmp_path):
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        cfg = base_config(tmp_path, listener=dict(port=port), metrics=dict(port=taken))
        proc = cli("serve", "--config", cfg, cwd=tmp_path)
    assert_one_clear_error(proc, 1, "cannot serve metrics", str(taken))
    with socket.socket() as probe:  # the MLLP port it had opened is closed again
        probe.settimeout(5)
        assert probe.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


def test_listen_address_not_on_this_host(tmp_path):
    cfg = base_config(tmp_path, listener=dict(host="192.0.2.1"))  # TEST-NET-1, never local
    proc = cli("serve", "--config", cfg, cwd=tmp_path)
    assert_one_clear_error(proc, 1, "cannot listen on 192.0.2.1")


def test_port_in_use_by_another_serve(tmp_path):
    """Two instances with the same port: the second says so and leaves the first alone."""
    port = free_port()
    first = Serve(base_config(tmp_path, "a.toml", listener=dict(port=port))).start()
    try:
        cfg = base_config(
            tmp_path,
            "b.toml",
            listener=dict(port=port),
            journal=dict(path=str(tmp_path / "other.sqlite3")),
            context=dict(store=str(tmp_path / "other-context.sqlite3")),  # (the same store: refused, see below)
        )
        proc = cli("serve", "--config", cfg, cwd=tmp_path)
        assert_one_clear_error(proc, 1, f"cannot listen on 127.0.0.1:{port}", "in use")
        with MllpConnection(port) as conn:
            assert msa(conn.send(SAMPLE.read_bytes())) == ("AA", "S0001")
        assert first.stop() == 0
    finally:
        first.kill()


def test_a_second_serve_on_the_same_context_store_is_refused(tmp_path):
    """Another journal and port, the same (default) context store: refused
    with one line naming the first serve's process, which goes on."""
    first = Serve(base_config(tmp_path, "a.toml", listener=dict(port=0))).start()
    try:
        cfg = base_config(tmp_path, "b.toml", listener=dict(port=0), journal=dict(path=str(tmp_path / "other.sqlite3")))
        proc = cli("serve", "--config", cfg, cwd=tmp_path)
        assert_one_clear_error(proc, 1, "another process is using the context store", f"(process {first.proc.pid})")
        with MllpConnection(first.port) as conn:
            assert msa(conn.send(SAMPLE.read_bytes())) == ("AA", "S0001")
        assert first.stop() == 0
        assert (tmp_path / "var" / "context.sqlite3").exists()
    finally:
        first.kill()


# --------------------------------------------------------------------------
# The journal: unusable at start, read-only, full


def oru(tag: str, pad: int = 0) -> bytes:
    note = f"NTE|1||{os.urandom(pad // 2).hex()}\r" if pad else ""
    return (
        f"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|{tag}|P|2.5.1\r"
        f"PID|1||ID-{tag}||Doe^John||19700101|M\r"
        f"OBX|1|NM|2345-7^Glucose^LN||5|mmol/L|3-6|N|||F\r{note}"
    ).encode()


def assert_refused_at_start(cfg: Path, tmp_path: Path, *words: str) -> str:
    """serve exits 1 before listening, with one line naming the journal."""
    serve = Serve(cfg).start(expect_listening=False)
    assert serve.wait_exit() == 1, serve.stderr
    lines = [line for line in serve.lines if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("b12comment: "), lines
    assert "journal.sqlite3" in lines[0] and all(w in lines[0] for w in words), lines
    assert "Traceback" not in serve.stderr and not serve.records("listening")
    assert not (tmp_path / "outbox").exists() or not list((tmp_path / "outbox").iterdir())
    return lines[0]


@pytest.mark.promise
def test_journal_path_is_a_directory(tmp_path):
    (tmp_path / "journal.sqlite3").mkdir()
    assert_refused_at_start(base_config(tmp_path), tmp_path, "cannot open journal")


@pytest.mark.promise
def test_journal_file_is_not_a_database(tmp_path):
    (tmp_path / "journal.sqlite3").write_bytes(b"this is not SQLite\n" * 100)
    assert_refused_at_start(base_config(tmp_path), tmp_path, "not a database", "queue export")
    assert (tmp_path / "journal.sqlite3").read_bytes() == b"this is not SQLite\n" * 100  # left as it was


@pytest.mark.promise
def test_journal_on_a_read_only_filesystem(tmp_path):
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        cfg = base_config(tmp_path, journal=dict(path=str(ro / "journal.sqlite3")))
        assert_refused_at_start(cfg, tmp_path, "Read-only file system")


@pytest.mark.slow
def test_existing_journal_on_a_filesystem_remounted_read_only(tmp_path):
    """Queued messages on a disk that became read-only: serve refuses to start
    on it (one line), and delivers them, once each, when it is writable again."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        dead_port = free_port()
        cfg = base_config(
            tmp_path,
            "down.toml",
            journal=dict(path=str(disk / "journal.sqlite3")),
            downstream=dict(url=f"mllp://127.0.0.1:{dead_port}", retry_initial_s=0.05, retry_max_s=0.2, timeout_s=2.0),
        )
        with Serve(cfg) as serve:
            with MllpConnection(serve.port) as conn:
                for n in range(3):
                    assert msa(conn.send(oru(f"Q{n}"))) == ("AA", f"Q{n}")
            assert serve.stop() == 0
        remount(disk, "ro")
        cfg = base_config(
            tmp_path,
            "ro.toml",
            journal=dict(path=str(disk / "journal.sqlite3")),
            downstream=dict(url=f"dir:{tmp_path / 'outbox'}", retry_initial_s=0.05, retry_max_s=0.2),
        )
        assert_refused_at_start(cfg, tmp_path, "Read-only file system")
        remount(disk, "rw")
        with Serve(cfg) as serve:  # writable again: the queued three are delivered, once each
            assert wait_until(lambda: len(list((tmp_path / "outbox").glob("*.hl7"))) == 3), serve.stderr
            assert serve.stop() == 0
        assert sorted(p.name.split("_", 1)[1] for p in (tmp_path / "outbox").glob("*.hl7")) == [
            "Q0.hl7",
            "Q1.hl7",
            "Q2.hl7",
        ]


@pytest.mark.promise
def test_journal_on_a_full_disk_answers_ae_then_recovers(tmp_path):
    """The disk fills while serve runs: messages that cannot be committed get
    AE (never AA); when space is freed, AA again without a restart; every AA
    is in the journal and delivered, no AE is."""
    import sqlite3

    with tmpfs(tmp_path / "disk", "512k") as disk:
        cfg = base_config(
            tmp_path,
            journal=dict(path=str(disk / "journal.sqlite3")),
            downstream=dict(url=f"dir:{tmp_path / 'outbox'}", retry_initial_s=0.05, retry_max_s=0.2),
        )
        answers: dict[str, str] = {}
        with Serve(cfg) as serve:
            with MllpConnection(serve.port) as conn:
                answers["before"] = msa(conn.send(oru("before")))[0]
                filler = disk / "filler"
                fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
                try:  # take every free block
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, b"\0" * 4096)
                finally:
                    os.close(fd)
                for n in range(60):
                    answers[f"F{n}"] = msa(conn.send(oru(f"F{n}", pad=8000)))[0]
                filler.unlink()
                for n in range(3):
                    answers[f"after{n}"] = msa(conn.send(oru(f"after{n}", pad=8000)))[0]
            aa = {cid for cid, code in answers.items() if code == "AA"}
            assert set(answers.values()) <= {"AA", "AE"}
            assert answers["before"] == "AA"
            assert "AE" in answers.values(), answers  # the full disk was noticed
            assert all(answers[f"after{n}"] == "AA" for n in range(3)), answers  # and recovered from
            outbox = tmp_path / "outbox"
            assert wait_until(lambda: len(list(outbox.glob("*.hl7"))) >= len(aa)), serve.stderr
            assert serve.stop() == 0
        assert "Traceback" not in serve.stderr
        assert any(r.get("stage") == "listener" for r in serve.records("journal_unavailable"))
        db = sqlite3.connect(disk / "journal.sqlite3")
        journaled = {cid for (cid,) in db.execute("SELECT control_id FROM messages WHERE state != 'invalid'")}
        db.close()
    delivered = {p.name.split("_", 1)[1][:-4] for p in (tmp_path / "outbox").glob("*.hl7")}
    assert aa <= journaled, aa - journaled  # nothing ACKed AA that is not on disk
    assert delivered == aa, delivered ^ aa  # every AA delivered, nothing answered AE forwarded
    print(f"full disk: {len(aa)} AA, {len(answers) - len(aa)} AE")


# --------------------------------------------------------------------------
# preview and replay with inputs that cannot be read


def _eio_file_works() -> bool:
    try:
        with open("/proc/self/mem", "rb") as f:
            f.read(16)
    except OSError as exc:
        return exc.errno == errno.EIO
    return False


def test_preview_of_a_missing_file_and_of_a_directory(tmp_path):
    proc = cli("preview", tmp_path / "nope.hl7", cwd=tmp_path)
    assert_one_clear_error(proc, 1, "nope.hl7", "No such file")
    proc = cli("preview", tmp_path, "--json", cwd=tmp_path)
    assert_one_clear_error(proc, 1, str(tmp_path), "Is a directory")
    assert proc.stdout == b""


def test_preview_of_a_file_without_hl7(tmp_path):
    (tmp_path / "binary.hl7").write_bytes(bytes(range(256)) * 4)
    proc = cli("preview", tmp_path / "binary.hl7", cwd=tmp_path)
    assert_one_clear_error(proc, 1, "binary.hl7", "no HL7 message")


def test_preview_of_a_file_whose_read_fails(tmp_path):
    if not _eio_file_works():
        pytest.skip("/proc/self/mem does not fail with EIO on this platform")
    proc = cli("preview", "/proc/self/mem", cwd=tmp_path)
    assert_one_clear_error(proc, 1, "/proc/self/mem", "Input/output error")


def test_replay_with_unreadable_inputs_reports_each_and_writes_the_rest(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.hl7").write_bytes(SAMPLE.read_bytes())
    whole = gzip.compress(SAMPLE.read_bytes() * 20)
    (src / "cut.hl7.gz").write_bytes(whole[: len(whole) // 2])
    eio = _eio_file_works()
    if eio:
        (src / "eio.hl7").symlink_to("/proc/self/mem")
    out = tmp_path / "out"
    proc = cli(
        "replay", src, "--out", out, "--report", tmp_path / "report.json", "--workers", "1", "--quiet", cwd=tmp_path
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    problems = [line for line in error_lines(err) if line.startswith("b12comment replay:")]
    assert sorted(p.split(":")[1].strip() for p in problems) == sorted(["cut.hl7.gz"] + (["eio.hl7"] if eio else []))
    if eio:
        assert any("Input/output error" in p for p in problems)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["good.hl7"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["messages"] == 1 and len(report["errors"]) == len(problems)


def test_replay_of_a_corrupt_gzip_is_reported_like_a_truncated_one(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.hl7").write_bytes(SAMPLE.read_bytes())
    whole = bytearray(gzip.compress(SAMPLE.read_bytes() * 20))
    whole[12:40] = b"\xff" * 28  # the deflate stream, not the header
    (src / "corrupt.hl7.gz").write_bytes(bytes(whole))
    proc = cli("replay", src, "--out", tmp_path / "out", "--quiet", cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    problems = [line for line in error_lines(err) if line.startswith("b12comment replay:")]
    assert len(problems) == 1 and "corrupt.hl7.gz" in problems[0]
    assert (tmp_path / "out" / "good.hl7").exists()


def test_replay_of_a_directory_symlink_loop_and_a_dangling_link(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    proc = cli("replay", tmp_path / "loop", "--out", tmp_path / "out", "--quiet", cwd=tmp_path)
    assert_one_clear_error(proc, 2, "input not found", "loop")
    (tmp_path / "dangling.hl7").symlink_to(tmp_path / "gone.hl7")
    proc = cli("replay", tmp_path / "dangling.hl7", "--out", tmp_path / "out", "--quiet", cwd=tmp_path)
    assert_one_clear_error(proc, 2, "input not found", "dangling.hl7")
    assert not (tmp_path / "out").exists()


def message_mode(folder: Path) -> Path:
    """A configuration that decides each message alone (no context store)."""
    path = folder / "message-mode.toml"
    path.write_text('[context]\nmode = "message"\n')
    return path


def test_replay_output_on_a_full_disk(tmp_path):
    """No space for the output: an error naming the file, exit 1, no partial file left."""
    with tmpfs(tmp_path / "small", "64k") as small:
        src = tmp_path / "big.hl7"
        src.write_bytes(SAMPLE.read_bytes() * 200)  # about 150 KiB of messages
        # Each message alone: the context's first pass would fill the disk before the output does.
        alone = message_mode(tmp_path)
        proc = cli("replay", src, "--out", small / "out", "--quiet", "--workers", "1", "--config", alone, cwd=tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "Traceback" not in err, err
        problems = [line for line in error_lines(err) if line.startswith("b12comment replay:")]
        assert len(problems) == 1 and "big.hl7" in problems[0] and "No space left" in problems[0], problems
        assert [p.name for p in (small / "out").iterdir() if not p.name.startswith(".b12comment-")] == []
        # With the context, its first pass's store is what fills the disk: one line, nothing left behind.
        proc = cli("replay", src, "--out", small / "out2", "--quiet", "--workers", "1", cwd=tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "Traceback" not in err, err
        problems = error_lines(err)
        assert len(problems) == 1 and problems[0].startswith("b12comment: replay: the context's first pass"), problems
        assert "full" in problems[0], problems
        assert [p.name for p in (small / "out2").iterdir() if not p.name.startswith(".b12comment-r")] == []


@pytest.mark.slow
def test_replay_counts_only_what_was_written_when_the_output_disk_fills(tmp_path):
    """Files after the disk filled are errors naming their output; the report
    (on a disk with space) counts only the messages of the outputs written."""
    src = tmp_path / "in"
    src.mkdir()
    message = SAMPLE.read_bytes()
    for i in range(12):
        (src / f"f{i:02d}.hl7").write_bytes(message * 40)  # about 30 KiB each
    with tmpfs(tmp_path / "small", "128k") as small:
        out, report = small / "out", tmp_path / "report.json"
        alone = message_mode(tmp_path)  # the output disk fills, not the context's first pass
        args = ("--out", out, "--quiet", "--workers", "1", "--report", report, "--config", alone)
        proc = cli("replay", src, *args, cwd=tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "Traceback" not in err, err
        written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        r = json.loads(report.read_text())
        assert 0 < len(written) < 12, written
        assert r["files"] == 12 and r["messages"] == 40 * len(written)
        assert r["commented"] == 40 * len(written)
        failed = sorted(e["file"] for e in r["errors"])
        assert failed == sorted({f"f{i:02d}.hl7" for i in range(12)} - set(written))
        for e in r["errors"]:
            assert f"cannot write {out / e['file']}" in e["error"] and "No space left" in e["error"], e
        print(
            f"REPLAY FULL DISK FIGURES: files 12, written {len(written)}, failed {len(failed)}, "
            f"messages in the report {r['messages']} (= 40 x {len(written)} written), lost 0"
        )
        # the report itself on the full disk: one clear line, the code still 1
        with contextlib.suppress(OSError), open(small / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        proc = cli("replay", src, "--dry-run", "--quiet", "--report", small / "r.json", cwd=tmp_path)
        lines = [line for line in error_lines(proc.stderr) if "r.json" in line]
        assert proc.returncode == 1 and len(lines) == 1 and "No space left" in lines[0], proc.stderr


# --------------------------------------------------------------------------
# The open-file limit against max_connections


def _serve_with_nofile(cfg: Path, soft: int, hard: int) -> subprocess.Popen:
    import resource

    return subprocess.Popen(
        [sys.executable, "-m", "b12comment", "serve", "--config", str(cfg)],
        cwd=cfg.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )


def test_max_connections_above_the_hard_open_file_limit_is_refused_at_start(tmp_path):
    cfg = base_config(tmp_path, listener=dict(max_connections=500))
    proc = _serve_with_nofile(cfg, 256, 256)
    out, err = proc.communicate(timeout=60)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert proc.returncode == 2, err
    assert len(lines) == 1 and "max_connections 500" in lines[0] and "limit is 256" in lines[0], lines
    assert "LimitNOFILE" in lines[0] and "Traceback" not in err.decode()


def test_max_connections_above_the_soft_limit_raises_it_and_serves(tmp_path):
    cfg = base_config(tmp_path, listener=dict(max_connections=500))
    proc = _serve_with_nofile(cfg, 256, 4096)
    try:
        raised = None
        for raw in proc.stderr:
            record = json.loads(raw)
            if record.get("event") == "open_file_limit_raised":
                raised = record
            if record.get("event") == "listening":
                with MllpConnection(record["port"]) as conn:
                    assert msa(conn.send(oru("NOFILE")))[0] == "AA"
                break
        assert raised and raised["soft_was"] == 256 and raised["soft"] >= 564, raised
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.slow
def test_out_of_file_descriptors_at_accept_pauses_logs_once_and_loses_nothing(tmp_path):
    """The open-file limit lowered under a running serve (as when something
    else in the process took the descriptors): accept() fails with EMFILE.
    serve pauses accepting (retrying each second), says so in one line, not
    one per retry, and once descriptors are free again serves the
    connections that waited in the backlog: every message AA and delivered."""
    import resource

    from service_helpers import Downstream, frame

    with Downstream() as down:
        cfg = base_config(
            tmp_path, listener=dict(max_connections=16), downstream=dict(url=down.url, retry_initial_s=0.05)
        )
        with Serve(cfg) as serve:
            pid = serve.proc.pid
            with MllpConnection(serve.port) as warm:  # the forwarder's connection is open from here on
                assert msa(warm.send(oru("WARM")))[0] == "AA"
            assert down.wait_for(1)
            assert serve.wait_record("connection_closed")
            time.sleep(0.3)  # the warm-up connection's descriptor is closed on serve's side
            open_fds = len(os.listdir(f"/proc/{pid}/fd"))
            limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            held: list[MllpConnection] = []
            waiting: list[tuple[MllpConnection, str]] = []
            try:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds + 3, limits[1]))
                for i in range(6):  # these take the last descriptors, until one is not accepted
                    conn = MllpConnection(serve.port, timeout=2)
                    conn.send_raw(frame(oru(f"HELD{i}")))
                    try:
                        assert msa(conn.read_ack())[0] == "AA"
                        held.append(conn)
                    except TimeoutError:
                        waiting.append((conn, f"HELD{i}"))
                        break
                assert waiting, "every connection was accepted: the limit did not bite"
                for i in range(5):  # these wait in the listen backlog too
                    conn = MllpConnection(serve.port, timeout=2)
                    conn.send_raw(frame(oru(f"WAIT{i}")))
                    waiting.append((conn, f"WAIT{i}"))
                assert serve.wait_record("accept_paused", timeout=10), serve.stderr
                time.sleep(3.5)  # asyncio retries each second: 3 more failed turns at least
                assert len(serve.records("accept_paused")) == 1, "\n".join(serve.lines[-40:])
                paused = serve.records("accept_paused")[0]
                assert paused["level"] == "warning" and "Too many open files" in paused["error"], paused
                for conn in held:  # their descriptors are free again: the backlog is served
                    conn.close()
                for conn, cid in waiting:  # each closed once answered, so the next one can be accepted
                    conn.sock.settimeout(30)
                    assert msa(conn.read_ack()) == ("AA", cid)
                    conn.close()
            finally:
                for conn in held + [c for c, _ in waiting]:
                    conn.close()
                resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
            assert serve.wait_record("accept_resumed", timeout=15), serve.stderr
            resumed = serve.records("accept_resumed")[0]
            assert resumed["paused_s"] >= 3 and resumed["retries"] >= 3, resumed
            with MllpConnection(serve.port) as after:
                assert msa(after.send(oru("AFTER")))[0] == "AA"
            sent = ["WARM", *(f"HELD{i}" for i in range(len(held))), *(cid for _, cid in waiting), "AFTER"]
            assert down.wait_for(len(sent)), serve.stderr
            assert serve.stop() == 0
    assert sorted({msh10(m) for m in down.received}) == sorted(sent)  # each AA delivered; nothing lost
    assert len(serve.records("accept_paused")) == 1
    assert "Traceback" not in serve.stderr
    print(
        f"EMFILE FIGURES paused {resumed['paused_s']} s, {resumed['retries']} retries, 1 line; "
        f"{len(held)} served, {len(waiting)} waited in the backlog; {len(sent)} sent, AA and delivered"
    )
