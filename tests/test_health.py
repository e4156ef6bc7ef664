"""Health split the usual way, and the metrics an on-call engineer expects.

- /livez: the process answers; /readyz: this instance accepts and its journal
  can be written; /healthz: both, and delivery is not lagging. Each failing
  one answers 503 with one line saying why. Real disks (a full tmpfs), a
  real downstream that refuses connections, real HTTP.
- /metrics is prometheus_client's exposition: it parses, carries the
  process_* metrics, build_info, the oldest undelivered message's age, the
  downstream's state and last delivery, decisions by reason, invalid frames
  and the context store's state; `promtool check metrics` accepts it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import urllib.error
import urllib.request

from disk_helpers import fill, tmpfs
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import MllpConnection, Serve, free_port, msa, wait_until, write_config

from b12comment import __version__
from b12comment.core.decision import RULE_VERSION
from b12comment.serve.health import Health

PROMTOOL = shutil.which("promtool")

CHILD = (
    b"MSH|^~\\&|LAB|RH|EPJ|RH|20240301120000||ORU^R01^ORU_R01|KID-1|P|2.5.1|||||DNK|8859/1\r"
    b"PID|1||0101151234^^^CPR||Jensen^Anna||20150101|F\r"
    b"OBR|1||LAB123|14685-2^Cobalamin^LN|||20240301080000\r"
    b"OBX|1|NM|14685-2^Cobalamin^LN||1500|pmol/L|200-600|H|||F|||20240301080000\r"
)
ADULT = CHILD.replace(b"KID-1", b"ADULT-1").replace(b"20150101", b"19600101").replace(b"0101151234", b"0101601234")


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def one_line(text: str) -> str:
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    return text.rstrip("\n")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def config(tmp_path, journal_dir, **downstream):
    downstream = {"url": f"dir:{tmp_path / 'outbox'}", **downstream}
    return write_config(
        tmp_path / "config.toml",
        listener=dict(port=0),
        metrics=dict(port=free_port(), max_delivery_lag_s=downstream.pop("lag", 900)),
        journal=dict(path=str(journal_dir / "journal.sqlite3")),
        downstream=dict(retry_initial_s=0.05, retry_max_s=0.2, **downstream),
        context=dict(store=str(tmp_path / "context.sqlite3"), key_file=str(tmp_path / "context.key")),
        logging=dict(level="debug"),  # a delivery's record is at debug
    )


def test_all_three_answer_ok_when_everything_works(tmp_path):
    with Serve(config(tmp_path, tmp_path)) as serve:
        for path in ("/livez", "/readyz", "/healthz"):
            assert get(serve.metrics_port, path) == (200, "ok\n"), path
        assert serve.stop() == 0


def test_a_full_journal_disk_is_not_ready_with_one_line_and_ready_again_when_freed(tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as disk, Serve(config(tmp_path, disk)) as serve:
        assert get(serve.metrics_port, "/readyz")[0] == 200
        filler = fill(disk)
        status, text = get(serve.metrics_port, "/readyz")
        assert status == 503
        line = one_line(text)
        assert line.startswith("not ready: the journal's disk is full") and str(disk) in line, line
        assert get(serve.metrics_port, "/healthz") == (503, text)
        assert get(serve.metrics_port, "/livez") == (200, "ok\n")  # alive: restarting would not help
        assert samples(get(serve.metrics_port, "/metrics")[1])[("b12comment_ready", ())] == 0
        os.unlink(filler)
        assert get(serve.metrics_port, "/readyz") == (200, "ok\n")
        assert serve.stop() == 0


def test_a_downstream_that_is_down_makes_delivery_lag_unhealthy_while_ready(tmp_path):
    closed = free_port()  # nothing listens there: connection refused
    cfg = config(tmp_path, tmp_path, url=f"mllp://127.0.0.1:{closed}", lag=0.5)
    with Serve(cfg) as serve:
        with MllpConnection(serve.port) as conn:
            assert msa(conn.send(CHILD))[0] == "AA"
        assert wait_until(lambda: get(serve.metrics_port, "/healthz")[0] == 503)
        line = one_line(get(serve.metrics_port, "/healthz")[1])
        assert line.startswith("delivery lagging: the oldest undelivered message is"), line
        assert "limit 0.5 s" in line
        assert get(serve.metrics_port, "/readyz") == (200, "ok\n")  # it still accepts, durably
        values = samples(get(serve.metrics_port, "/metrics")[1])
        assert values[("b12comment_downstream_up", ())] == 0
        assert values[("b12comment_ready", ())] == 1
        assert values[("b12comment_oldest_undelivered_seconds", ())] > 0.5
        assert values[("b12comment_queue_depth", ())] == 1
        assert values[("b12comment_last_delivery_timestamp_seconds", ())] == 0
        assert serve.stop() == 0


def test_a_stopping_instance_is_not_ready_and_an_http_only_one_is():
    async def run():
        stopping = Health(accepting=lambda: False)
        assert await stopping.answer("/readyz") == (503, "not ready: the service is stopping\n")
        assert await stopping.answer("/livez") == (200, "ok\n")
        http_only = Health()
        assert await http_only.answer("/healthz") == (200, "ok\n")

        async def standby() -> str:
            return "this instance is the standby"

        http_only.add_ready_check(standby)
        assert await http_only.answer("/readyz") == (503, "not ready: this instance is the standby\n")

    asyncio.run(run())


def test_metrics_are_prometheus_clients_with_the_new_series(tmp_path):
    with Serve(config(tmp_path, tmp_path)) as serve:
        with MllpConnection(serve.port) as conn:
            assert msa(conn.send(CHILD))[0] == "AA"
            assert msa(conn.send(ADULT))[0] == "AA"
            assert msa(conn.send(b"not hl7"))[0] == "AR"
        assert serve.wait_record("forwarded", 2)
        status, text = get(serve.metrics_port, "/metrics")
        assert serve.stop() == 0
    assert status == 200
    values = samples(text)
    assert values[("b12comment_build_info", (("rule_version", RULE_VERSION), ("version", __version__)))] == 1
    assert values[("b12comment_decisions_total", (("decision", "commented"),))] == 1
    assert values[("b12comment_decisions_total", (("decision", "unchanged"),))] == 1
    assert values[("b12comment_decision_reasons_total", (("reason", "adult"),))] == 1
    assert values[("b12comment_invalid_frames_total", ())] == 1
    assert values[("b12comment_downstream_up", ())] == 1
    assert values[("b12comment_last_delivery_timestamp_seconds", ())] > 1.7e9
    assert values[("b12comment_context_store_up", ())] == 1
    assert values[("b12comment_oldest_undelivered_seconds", ())] == 0  # nothing waits
    assert values[("process_resident_memory_bytes", ())] > 0
    assert values[("process_open_fds", ())] > 0
    if PROMTOOL:
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def test_the_http_port_answers_the_same_health(tmp_path):
    cfg = write_config(
        tmp_path / "config.toml",
        listener=dict(enabled=False),
        http=dict(enabled=True, port=free_port()),
        context=dict(store=str(tmp_path / "context.sqlite3"), key_file=str(tmp_path / "context.key")),
    )
    port = int(next(line.split("=")[1] for line in cfg.read_text().splitlines() if line.startswith("port")))
    serve = Serve(cfg).start(expect_listening=False)
    try:
        assert serve.wait_record("http_listening"), serve.stderr
        for path in ("/livez", "/readyz", "/healthz"):
            assert get(port, path) == (200, "ok\n"), path
        assert "b12comment_build_info" in get(port, "/metrics")[1]
    finally:
        assert serve.stop() == 0
