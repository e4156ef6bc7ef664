"""The audit store in PostgreSQL: the same rows, key check, purge and
outcomes as in SQLite, on a real server the suite starts (pg_url, from the
PostgreSQL journal's tests); skipped, saying why, where there is none."""

from __future__ import annotations

import time
from datetime import date, timedelta

import pytest
from test_audit import row

from b12comment.audit import AuditError, Followup, open_audit
from b12comment.audit.outcomes import outcomes
from b12comment.context.store import load_key
from b12comment.errors import B12Error


@pytest.fixture
def url(request) -> str:
    try:
        return request.getfixturevalue("pg_url")
    except pytest.FixtureLookupError:
        pytest.skip("no PostgreSQL fixture (pg_url) in this suite")


def test_rows_key_purge_and_outcomes_in_postgresql(url, tmp_path):
    key = load_key(tmp_path / "audit.key", "audit")
    store = open_audit(url, key)
    now = time.time()
    today = date.today()
    first = today - timedelta(days=100)
    rows = [row([f"c{i}"], first.isoformat()) for i in range(6)]
    rows += [row([f"c{i}"], (first + timedelta(days=30)).isoformat(), commented=False) for i in range(5)]
    rows.append(row(["old"], today.isoformat(), decided_at=now - 800 * 86400))
    store.add(rows)
    store.add_followups([Followup("c0", first.isoformat(), "X")] * 2)  # once
    store.close()
    with pytest.raises(AuditError, match="written with another key"):
        open_audit(url, load_key(tmp_path / "other.key", "audit"))
    store = open_audit(url, key)
    assert store.purge(730, now=now) == 1
    assert len(list(store.decisions(today, today))) == 11
    assert list(store.decisions(today + timedelta(days=1))) == []
    assert store.followups() == [Followup("c0", first.isoformat(), "X")]
    store.close()
    reader = open_audit(url, None)
    report = outcomes(reader.decisions(), reader.followups(), as_of=today, windows=(56,), min_cell=0)
    reader.close()
    assert report["windows"] == [{"days": 56, "commented": 6, "repeated": 5, "share": round(5 / 6, 4)}]


def test_an_unreachable_postgresql_is_one_line(tmp_path):
    with pytest.raises(B12Error) as found:
        open_audit("postgresql://nobody:secret@/none?host=/nonexistent&port=1", load_key(tmp_path / "k"))
    text = str(found.value)
    assert "secret" not in text and "\n" not in text
    assert "cannot connect to postgresql://nobody:***@" in text or "needs psycopg" in text
