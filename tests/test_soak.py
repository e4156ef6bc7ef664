"""Crash soak and downstream outage of `b12comment serve` as a real subprocess.

- test_crash_soak: 20,000 messages from 4 concurrent senders while serve is
  SIGKILLed at random (seeded) moments 4 times and the downstream restarts
  once. Every AA reaches the downstream, per-sender order is kept, each
  delivery is process(original) byte for byte, a duplicate is a second copy
  of a message that was in flight at a kill (at most one per kill), and after
  every kill the journal on disk holds everything ACKed AA so far.
- test_outage_queue_grows_on_disk_then_drains_in_order: the downstream is
  down while 2,000 messages (most of them ~64 KB) arrive; /metrics shows the
  queue growing, serve's memory stays far below the bytes queued, and the
  queue drains in order when the downstream returns.

Knobs (environment): SOAK_SEED (default 20241125), SOAK_MESSAGES (20000).
Run with -s to see the figures.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import time
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor

import pytest
from service_helpers import Serve, free_port, wait_until, write_config
from soak_helpers import (
    RestartableDownstream,
    RssMonitor,
    Sender,
    expected_outputs,
    rss_kb,
    scrape,
    set_control_id,
    templates,
)

from b12comment.config import Config
from b12comment.core.engine import process
from b12comment.delivery.forwarder import RECORD_EVERY

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("SOAK_SEED", "20241125"))
MESSAGES = int(os.environ.get("SOAK_MESSAGES", "20000"))
SENDERS = 4
KILLS_WHILE_SENDING = 3
RUN_LIMIT_S = 900.0  # a bound on every loop, not an expectation


def journal_rows(path) -> list[tuple[str, str]]:
    """(control_id, state) of every row, read with plain sqlite3."""
    db = sqlite3.connect(path, timeout=30)
    try:
        return db.execute("SELECT control_id, state FROM messages ORDER BY id").fetchall()
    finally:
        db.close()


def soak_config(path, port: int, journal, downstream_url: str, **extra):
    # Each message on its own: the soak repeats corpus messages of the same patients.
    extra.setdefault("context", dict(mode="message"))
    return write_config(
        path,
        listener=dict(port=port, idle_timeout_s=300.0),
        journal=dict(path=str(journal)),
        downstream=dict(url=downstream_url, timeout_s=10.0, retry_initial_s=0.05, retry_max_s=0.5),
        logging=dict(format="json", level="info"),
        **extra,
    )


class Incarnations:
    """serve, started again after each kill, on the same port."""

    def __init__(self, config):
        self.config = config
        self.current: Serve | None = None
        self.all: list[Serve] = []

    def start(self) -> Serve:
        self.current = Serve(self.config).start()
        self.all.append(self.current)
        return self.current

    def port(self):
        s = self.current
        return s.port if s is not None and s.proc.poll() is None else None

    def kill(self) -> None:
        s = self.current
        self.current = None
        s.proc.send_signal(signal.SIGKILL)
        assert s.wait_exit() == -signal.SIGKILL

    def cleanup(self) -> None:
        for s in self.all:
            s.kill()


def match_duplicates(
    positions: dict[str, list[int]], events: list[int], per_event: int = RECORD_EVERY
) -> tuple[list, list]:
    """Explain each extra copy of a control ID by a kill/restart that happened
    between the copy before it and itself (index `e` in the delivery list:
    copies before `e` arrived before the event). One event explains at most
    `per_event` copies: the forwarder records the AAs of up to that many
    deliveries in one journal call, so a kill can make that many be sent
    again. Greedy by the later copy, earliest event with room first: optimal
    for points in intervals. Returns (matched pairs, unexplained pairs)."""
    pairs = sorted(
        ((p[i], p[i + 1], cid) for cid, p in positions.items() for i in range(len(p) - 1)), key=lambda x: x[1]
    )
    room = dict.fromkeys(events, 0)
    for e in events:
        room[e] += per_event
    free = sorted(room)
    matched, unexplained = [], []
    for first, second, cid in pairs:
        pick = next((e for e in free if first < e <= second and room[e] > 0), None)
        if pick is None:
            unexplained.append((cid, first, second))
        else:
            room[pick] -= 1
            matched.append((cid, first, second, pick))
    return matched, unexplained


def test_match_duplicates_explains_each_copy_by_one_event_only():
    # The checker itself: with room for one copy per event, two copies need two events between them.
    assert match_duplicates({"A": [1, 5]}, [3], 1)[1] == []
    assert match_duplicates({"A": [1, 5], "B": [2, 6]}, [3], 1)[1] == [("B", 2, 6)]
    assert match_duplicates({"A": [1, 5, 9]}, [3, 4], 1)[1] == [("A", 5, 9)]
    assert match_duplicates({"A": [4, 5]}, [3], 1)[1] == [("A", 4, 5)]  # event before the first copy
    # With room for two: one event explains two copies, not three.
    assert match_duplicates({"A": [1, 5], "B": [2, 6]}, [3], 2)[1] == []
    assert match_duplicates({"A": [1, 5], "B": [2, 6], "C": [2, 7]}, [3], 2)[1] == [("C", 2, 7)]


def test_crash_soak(tmp_path):
    rng = random.Random(SEED)
    mix = templates()
    per_sender = MESSAGES // SENDERS
    plans = {
        k: [(f"S{k}-{n}", set_control_id(mix[rng.randrange(len(mix))], f"S{k}-{n}")) for n in range(1, per_sender + 1)]
        for k in range(1, SENDERS + 1)
    }
    originals = {cid: payload for plan in plans.values() for cid, payload in plan}
    total = len(originals)

    # process() of every message, computed beside the run in a worker process.
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    cids = list(originals)
    expected_future = pool.submit(expected_outputs, [originals[c] for c in cids])

    down = RestartableDownstream(port=free_port()).start()
    journal = tmp_path / "journal.sqlite3"
    serves = Incarnations(soak_config(tmp_path / "config.toml", free_port(), journal, down.url))
    events: list[int] = []  # downstream delivery count at each kill / downstream restart
    event_log: list[str] = []
    journal_checks: list[tuple[int, int]] = []  # (ACKed AA so far, of them found in the journal) at each kill
    senders = [Sender(str(k), serves.port, plans[k]) for k in plans]

    def acked_now() -> set[str]:
        return set().union(*(s.acked_aa() for s in senders))

    def acked_count() -> int:
        return sum(len(s.acked_order) for s in senders)

    def kill_and_restart(why: str) -> None:
        time.sleep(rng.uniform(0.0, 0.3))  # a random moment
        serves.kill()
        # What serve wrote before dying reaches the downstream and the senders: wait
        # until the downstream's count stands still (bounded).
        before = -1
        for _ in range(40):
            if down.count() == before:
                break
            before = down.count()
            time.sleep(0.5)
        events.append(down.count())
        acked = acked_now()
        in_journal = {cid for cid, state in journal_rows(journal) if state != "invalid"}
        missing = acked - in_journal
        assert not missing, f"ACKed AA but not in the journal after SIGKILL ({why}): {sorted(missing)[:10]}"
        journal_checks.append((len(acked), len(acked & in_journal)))
        event_log.append(
            f"SIGKILL {why}: {len(acked)} ACKed AA so far, all in the journal; {events[-1]} deliveries so far"
        )
        time.sleep(rng.uniform(0.0, 1.0))
        serves.start()

    kill_at = sorted(rng.sample(range(total // 10, total * 85 // 100), KILLS_WHILE_SENDING))
    downstream_restart_at = rng.randrange(total // 5, total * 4 // 5)
    started = time.monotonic()
    try:
        serves.start()
        for s in senders:
            s.start()
        deadline = time.monotonic() + RUN_LIMIT_S
        restarted_downstream = False
        while any(s.is_alive() for s in senders):
            assert time.monotonic() < deadline, "senders did not finish"
            n = acked_count()
            if kill_at and n >= kill_at[0]:
                kill_and_restart(f"while sending, after {kill_at.pop(0)} ACKs")
            elif not restarted_downstream and n >= downstream_restart_at:
                down.stop()
                events.append(down.count())
                event_log.append(f"downstream stopped after {n} ACKs, {events[-1]} deliveries")
                time.sleep(rng.uniform(0.5, 2.0))
                down.start()
                restarted_downstream = True
            time.sleep(0.02)
        for s in senders:
            s.join(10)
        sending_s = time.monotonic() - started
        assert not kill_at and restarted_downstream
        # One more kill while the queue drains (at least 3 while sending, in any case).
        already = down.count()
        drain_kill_at = already + int((total - already) * rng.uniform(0.2, 0.8))
        wait_until(lambda: down.count() >= drain_kill_at, timeout=RUN_LIMIT_S, interval=0.01)
        kill_and_restart(f"while draining (at {drain_kill_at} deliveries or more)")

        def delivered_all() -> bool:
            return len({d.control_id for d in down.snapshot()}) >= total

        assert wait_until(delivered_all, timeout=RUN_LIMIT_S, interval=0.2), (
            f"{len({d.control_id for d in down.snapshot()})} of {total} delivered"
        )
        last = serves.current
        assert last.stop(signal.SIGTERM) == 0, last.stderr[-3000:]
        elapsed = time.monotonic() - started
    finally:
        for s in senders:
            s.stopping = True
        serves.cleanup()
        down.stop()
    expected = dict(zip(cids, expected_future.result(timeout=600), strict=False))
    pool.shutdown()

    # ---- what the senders saw
    for s in senders:
        assert not s.log.errors, s.log.errors[:5]
    acked = acked_now()
    assert acked == set(originals), "every message was ACKed AA in the end (senders resend until then)"

    # ---- what the downstream got
    deliveries = down.snapshot()
    positions: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(deliveries):
        positions[d.control_id].append(i)
    delivered = set(positions)
    lost = acked - delivered
    assert not lost, f"ACKed AA, never delivered: {sorted(lost)[:20]}"
    assert delivered <= set(originals), f"delivered but never sent: {sorted(delivered - set(originals))[:5]}"
    for k, plan in plans.items():
        firsts = [cid for cid in sorted(positions, key=lambda c: positions[c][0]) if cid.startswith(f"S{k}-")]
        assert firsts == [cid for cid, _ in plan], f"sender {k}: order not kept"
    wrong = [d.control_id for d in deliveries if d.payload != expected[d.control_id]]
    assert not wrong, f"delivered bytes differ from process(original): {wrong[:10]}"
    commented = sum(1 for cid in cids if expected[cid] != originals[cid])
    assert commented > 0 and commented < total  # the mix holds both

    # ---- duplicates: a second copy (same control ID, same bytes) of what was in flight at a kill
    copies = Counter(d.control_id for d in deliveries)
    duplicates = sum(c - 1 for c in copies.values())
    matched, unexplained = match_duplicates(positions, events)
    assert not unexplained, f"duplicates not explained by a kill or the downstream restart: {unexplained}"
    assert duplicates <= len(events) * RECORD_EVERY

    # ---- the journal at the end: one row per message, all forwarded
    rows = journal_rows(journal)
    states = Counter(state for _, state in rows)
    assert states == Counter({"forwarded": total}), states
    assert Counter(cid for cid, _ in rows) == Counter(list(originals))

    reconnects = sum(s.log.reconnects for s in senders)
    resends = sum(s.log.attempts for s in senders) - total
    figures = dict(
        seed=SEED,
        senders=SENDERS,
        sent=total,
        acked_aa=len(acked),
        delivered_distinct=len(delivered),
        deliveries=len(deliveries),
        duplicates=duplicates,
        lost=len(lost),
        commented=commented,
        sigkills=len(serves.all) - 1,
        downstream_restarts=1,
        sender_resends=resends,
        sender_reconnects=reconnects,
        journal_checks_after_kills=journal_checks,
        sending_s=round(sending_s, 1),
        total_s=round(elapsed, 1),
        duplicate_detail=[f"{cid} (copies at {a} and {b}, event at {e})" for cid, a, b, e in matched],
    )
    assert figures["sigkills"] >= 4
    print("\n" + "\n".join(event_log))
    print("SOAK FIGURES " + json.dumps(figures))
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=1))


# --------------------------------------------------------------------------
# Outage


def padded(n: int, size: int, tag: str) -> bytes:
    """An ORU without B12, made large by an NTE: process() leaves it as it is."""
    filler = (b"lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    return (
        (
            f"MSH|^~\\&|LAB|F|EHR|F|20240101||ORU^R01|{tag}{n}|P|2.5.1\r"
            f"PID|1||ID{n}||Doe^John||19700101|M\r"
            f"OBX|1|NM|2345-7^Glucose^LN||{n}|mmol/L|3-6|N|||F\r"
        ).encode()
        + b"NTE|1||"
        + filler
        + b"\r"
    )


def test_outage_queue_grows_on_disk_then_drains_in_order(tmp_path):
    rng = random.Random(SEED + 1)
    mix = templates()
    rule = Config().rule
    pad = 64 * 1024

    def plan(tag: str, count: int) -> list[tuple[str, bytes]]:
        out = []
        for n in range(1, count + 1):
            cid = f"{tag}{n}"
            out.append((cid, set_control_id(mix[rng.randrange(len(mix))], cid) if n % 4 == 0 else padded(n, pad, tag)))
        return out

    warm = plan("W-", 300)
    during = {k: plan(f"O{k}-", 1000) for k in (1, 2)}
    outage_total = sum(len(p) for p in during.values())
    queued_bytes = sum(len(m) for p in during.values() for _, m in p)
    everything = warm + [x for p in during.values() for x in p]
    expected = {cid: hashlib.sha256(process(m, rule)[0]).digest() for cid, m in everything}

    down = RestartableDownstream(port=free_port(), keep_payload=lambda p: False).start()
    metrics_port = free_port()
    cfg = soak_config(
        tmp_path / "config.toml", 0, tmp_path / "journal.sqlite3", down.url, metrics=dict(port=metrics_port)
    )
    serve = Serve(cfg).start()
    monitor = RssMonitor(serve.proc.pid)
    monitor.start()
    try:
        sender = Sender("warm", lambda: serve.port, warm)
        sender.start()
        sender.join(RUN_LIMIT_S)
        assert sender.acked_aa() == {cid for cid, _ in warm}
        assert down.wait_for(len(warm), RUN_LIMIT_S)
        assert wait_until(lambda: scrape(metrics_port)["b12comment_queue_depth"] == 0, timeout=60)
        time.sleep(1.0)
        baseline_kb = max(rss_kb(serve.proc.pid), monitor.peak_since(time.monotonic() - 1.0))

        down.stop()  # the outage: nothing listens on the downstream port
        outage_started = time.monotonic()
        depths = [int(scrape(metrics_port)["b12comment_queue_depth"])]  # 0: the warm-up was delivered
        senders = [Sender(f"out{k}", lambda: serve.port, p) for k, p in during.items()]
        for s in senders:
            s.start()
        deadline = time.monotonic() + RUN_LIMIT_S
        while any(s.is_alive() for s in senders) and time.monotonic() < deadline:
            depths.append(int(scrape(metrics_port)["b12comment_queue_depth"]))
            time.sleep(0.25)
        for s in senders:
            s.join(10)
        for s, p in zip(senders, during.values(), strict=True):
            assert s.acked_aa() == {cid for cid, _ in p}, "serve journals and ACKs while the downstream is down"
        final = scrape(metrics_port)
        depths.append(int(final["b12comment_queue_depth"]))
        outage_peak_kb = monitor.peak_since(outage_started)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=20) as resp:
            assert resp.status == 200
        assert down.count() == len(warm), "nothing can be delivered while the downstream is down"

        down.start()  # the downstream returns
        drain_started = time.monotonic()
        assert down.wait_for(len(everything), RUN_LIMIT_S), f"{down.count()} of {len(everything)} delivered"
        drain_s = time.monotonic() - drain_started
        assert wait_until(lambda: scrape(metrics_port)["b12comment_queue_depth"] == 0, timeout=60)
        after = scrape(metrics_port)
        drain_peak_kb = monitor.peak_since(drain_started)
        assert serve.stop() == 0
    finally:
        monitor.stop()
        serve.kill()
        down.stop()

    # The queue grew while the downstream was down, by exactly what was ACKed, and never shrank.
    assert depths == sorted(depths), f"queue depth went down during the outage: {depths}"
    assert depths[0] == 0 and depths[-1] == outage_total, depths
    # Memory stays far below the bytes queued: the queue is on disk, not in serve.
    assert queued_bytes > 90 * 1024 * 1024
    growth_kb = outage_peak_kb - baseline_kb
    assert growth_kb < queued_bytes / 1024 / 2, (baseline_kb, outage_peak_kb, queued_bytes)
    assert drain_peak_kb - baseline_kb < queued_bytes / 1024 / 2, (baseline_kb, drain_peak_kb)
    # Drained in order: exactly once each, each sender's messages in its order, bytes as process() made them.
    deliveries = down.snapshot()
    assert [d.control_id for d in deliveries[: len(warm)]] == [cid for cid, _ in warm]
    assert Counter(d.control_id for d in deliveries) == Counter(cid for cid, _ in everything)
    for k, p in during.items():
        assert [d.control_id for d in deliveries if d.control_id.startswith(f"O{k}-")] == [cid for cid, _ in p]
    assert all(d.digest == expected[d.control_id] for d in deliveries)
    assert after["b12comment_dead_lettered_total"] == 0
    assert after["b12comment_forwarded_total"] == len(everything)
    assert after["b12comment_retries_total"] > 0  # it did try while the downstream was down
    figures = dict(
        warm_up=len(warm),
        sent_during_outage=outage_total,
        queued_mb=round(queued_bytes / 2**20, 1),
        depth_samples=len(depths),
        max_depth=max(depths),
        baseline_rss_mb=round(baseline_kb / 1024, 1),
        outage_peak_rss_mb=round(outage_peak_kb / 1024, 1),
        drain_peak_rss_mb=round(drain_peak_kb / 1024, 1),
        delivered=len(deliveries),
        duplicates=len(deliveries) - len(everything),
        lost=0,
        retries=after["b12comment_retries_total"],
        drain_s=round(drain_s, 1),
    )
    print("\nOUTAGE FIGURES " + json.dumps(figures))
