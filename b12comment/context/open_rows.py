"""The patient's open results: what keeps a decision's cost flat as the
patient's history grows.

A comment is vetoed by a result of the patient in another requisition only
if that result's newest row is abnormal, cannot be judged or is pending (a
B12 only if it was low; core.context.veto). A child in a long stay has hundreds of
normal final results and a few that are not; reading every row of the
patient for every message made each decision slower than the last.

So beside `results` the store keeps a table of open rows (`TABLE`): per patient and per
(requisition, kind, analyte), the newest row if it is *open*, a result (not
an order) that is not a normal final one (OBX-11 "F", final in HL7 table
0085 whatever else the rule calls final or pending), and of a B12 one that
is neither normal nor abnormal (low, or cannot be judged). A newer row of
the same key replaces it: an open one takes its place, a settled one (a
normal final result, a normal or elevated B12) removes it; a row of the same message never
removes it (two values of one analyte in one message: the open one stays).
Rows without a requisition are each their own key (they supersede nothing).

The patient part of a look-up reads only these rows (an index on the
patient), and keeps one only if no newer row of the same key and of one of
the message's patients is in `results` (a row of the same requisition kept
under another identifier of the patient). The requisition part reads the
requisitions' own rows as before: both are bounded by what can veto and by
the requisition's size, not by the patient's history.

The table is derived from `results` and has its columns (but the row's
place in its message): a store made before it had one, or before a column
was added, gets it made again from its rows when it is opened.
"""

from __future__ import annotations

import sqlite3

from b12comment.core.rows import OBX
from b12comment.core.verdict import ABNORMAL, NORMAL

SETTLED_STATUS = "F"
# The table's name says which rows it keeps: a store whose table kept others
# (an earlier version's) gets it made again when opened.
TABLE = "open_results_2"
_EARLIER = ("open_results",)
_KEY = ("patient", "grp", "kind", "analyte")
# A store made before the table, or before a column: each patient's newest open row per key.
_FILL_WHERE = f"""
WHERE length(patient) > 0 AND kind = '{OBX}'
  AND CASE WHEN is_b12 THEN verdict NOT IN ('{NORMAL}', '{ABNORMAL}')
      ELSE NOT (verdict = '{NORMAL}' AND status = '{SETTLED_STATUS}') END
  AND NOT EXISTS (
      SELECT 1 FROM results n
      WHERE length(r.requisition) > 0 AND n.requisition = r.requisition AND n.patient = r.patient
        AND n.kind = r.kind AND n.analyte = r.analyte AND n.seq > r.seq)
ORDER BY seq
"""
_GROUP_SQL = "CASE WHEN length(requisition) = 0 THEN CAST('arrival:' || seq AS BLOB) ELSE requisition END"


def _kept(columns: tuple[str, ...]) -> list[str]:
    """The columns of `results` the table keeps (all but the row's place)."""
    return [c for c in columns if c != "row_index"]


def is_open(kind: str, is_b12: int, verdict: str, status: str) -> bool:
    """A row that may veto a comment of another requisition of its patient
    (a superset of what core.context.veto vetoes with: a test holds them
    together): a result that is not a normal final one; of a B12, one that
    is neither normal nor abnormal (a low one, one that cannot be judged)."""
    if kind != OBX:
        return False
    if is_b12:
        return verdict not in (NORMAL, ABNORMAL)
    return not (verdict == NORMAL and status == SETTLED_STATUS)


def group(requisition: bytes, seq: int) -> bytes:
    """The key a newer row supersedes by (with kind and analyte): the
    requisition; a row without one is its message's own."""
    return requisition or f"arrival:{seq}".encode()


# A requisition's rows are read with GROUP BY while it has fewer than this
# many; past it (a requisition sent again and again) each (kind, analyte) is
# found by index seeks and its newest row read alone.
LONG_REQUISITION = 64
_REQUISITION_INDEX = (
    "CREATE INDEX IF NOT EXISTS results_by_requisition_key ON results (requisition, kind, analyte, seq)"
)


def requisition_query(fields: str) -> str:
    """The newest rows of each (kind, analyte) of one requisition (argument
    ?1): a skip scan over results_by_requisition_key, so its cost grows with
    the requisition's analytes, not with how often it was sent. Every row of
    the newest message is returned (the doubtful ones last, as the one
    core.context.latest keeps)."""
    return f"""
WITH RECURSIVE
 kinds(k) AS (
   SELECT (SELECT MIN(kind) FROM results WHERE requisition = ?1)
   UNION ALL
   SELECT (SELECT MIN(kind) FROM results WHERE requisition = ?1 AND kind > kinds.k) FROM kinds WHERE k IS NOT NULL),
 g(k, a) AS (
   SELECT k, (SELECT MIN(analyte) FROM results WHERE requisition = ?1 AND kind = kinds.k) FROM kinds WHERE k IS NOT NULL
   UNION ALL
   SELECT k, (SELECT MIN(analyte) FROM results WHERE requisition = ?1 AND kind = g.k AND analyte > g.a)
   FROM g WHERE a IS NOT NULL)
SELECT {fields}, seq FROM g CROSS JOIN results x
  ON x.requisition = ?1 AND x.kind = g.k AND x.analyte = g.a
 AND x.seq = (SELECT MAX(seq) FROM results m WHERE m.requisition = ?1 AND m.kind = g.k AND m.analyte = g.a)
WHERE g.a IS NOT NULL
ORDER BY x.verdict = '{NORMAL}' DESC"""


def is_long(db: sqlite3.Connection, requisition: bytes) -> bool:
    found = db.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM results WHERE requisition = ? LIMIT ?)", (requisition, LONG_REQUISITION)
    ).fetchone()
    return bool(found and found[0] >= LONG_REQUISITION)


def create(db: sqlite3.Connection, columns: tuple[str, ...]) -> None:
    """The table with `results`' `columns` (made again, from `results`,
    if the store had none or it lacks one), and the requisitions' index."""
    db.execute(_REQUISITION_INDEX)
    db.execute("DROP INDEX IF EXISTS results_by_requisition")  # (its prefix)
    kept = _kept(columns)
    have = [row[1] for row in db.execute(f"PRAGMA table_info({TABLE})")]
    if have and set(have) == {"grp", *kept}:
        return
    db.execute("BEGIN IMMEDIATE")  # made and filled at once: never an empty table taken for a filled one
    try:
        for name in (*_EARLIER, TABLE):
            db.execute(f"DROP TABLE IF EXISTS {name}")
        db.execute(
            f"CREATE TABLE {TABLE} (grp BLOB NOT NULL, {', '.join(kept)}, "
            f"PRIMARY KEY ({', '.join(_KEY)})) WITHOUT ROWID"
        )
        db.execute(f"CREATE INDEX {TABLE}_by_time ON {TABLE} (stored_at)")
        db.execute(
            f"INSERT OR REPLACE INTO {TABLE} (grp, {', '.join(kept)}) "
            f"SELECT {_GROUP_SQL}, {', '.join(kept)} FROM results r {_FILL_WHERE}"
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def record(db: sqlite3.Connection, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """Keep the open rows of `rows` (tuples of `results`' `columns`) and
    drop what they settle."""
    kept = _kept(columns)
    at = {c: i for i, c in enumerate(columns)}
    seq, patient, requisition, kind, analyte = (at[c] for c in ("seq", "patient", "requisition", "kind", "analyte"))
    is_b12, verdict, status = at["is_b12"], at["verdict"], at["status"]
    take = [at[c] for c in kept]
    upserts, settles = [], []
    for r in rows:
        if not r[patient] or r[kind] != OBX:
            continue  # found by its requisition only; an order is never open
        grp = group(r[requisition], r[seq])
        if is_open(r[kind], r[is_b12], r[verdict], r[status]):
            upserts.append((grp, *(r[i] for i in take)))
        elif r[requisition]:
            settles.append((r[patient], grp, r[kind], r[analyte], r[seq]))
    if settles:
        db.executemany(
            f"DELETE FROM {TABLE} WHERE patient = ? AND grp = ? AND kind = ? AND analyte = ? AND seq < ?", settles
        )
    if upserts:
        updated = ", ".join(f"{c} = excluded.{c}" for c in kept if c not in _KEY)
        db.executemany(
            f"INSERT INTO {TABLE} (grp, {', '.join(kept)}) VALUES ({','.join('?' * (len(kept) + 1))}) "
            f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET {updated} WHERE excluded.seq >= {TABLE}.seq",
            upserts,
        )


def query(fields: str, patients: list[bytes]) -> str:
    """The patient part of a look-up (`fields`, then seq): the open rows of
    these patients that no newer row of the same key and of one of these
    patients supersedes. Its arguments: `patients` twice."""
    marks = ",".join("?" * len(patients))
    return (
        f"SELECT {fields}, seq FROM {TABLE} o WHERE o.patient IN ({marks}) AND NOT EXISTS ("
        "SELECT 1 FROM results n WHERE length(o.requisition) > 0 AND n.requisition = o.requisition "
        f"AND n.kind = o.kind AND n.analyte = o.analyte AND n.seq > o.seq AND n.patient IN ({marks}))"
    )


def rekey(db: sqlite3.Connection, rekeyed: list[tuple[bytes, bytes, bytes]], derivation: int) -> None:
    """The open rows of an earlier key derivation take the requisition's key
    now ((new, old, patient) as the store's `rekeyed`): one the patient
    already has an open row of under the new key is older than it and goes."""
    for new, old, patient in rekeyed:
        db.execute(
            f"DELETE FROM {TABLE} WHERE patient = ? AND grp = ? AND derivation < ? AND EXISTS ("
            f"SELECT 1 FROM {TABLE} n WHERE n.patient = {TABLE}.patient AND n.grp = ? "
            f"AND n.kind = {TABLE}.kind AND n.analyte = {TABLE}.analyte)",
            (patient, old, derivation, new),
        )
        db.execute(
            f"UPDATE {TABLE} SET grp = ?, requisition = ?, derivation = ? "
            "WHERE patient = ? AND grp = ? AND derivation < ?",
            (new, new, derivation, patient, old, derivation),
        )


def purge(db: sqlite3.Connection, cutoff: float) -> None:
    db.execute(f"DELETE FROM {TABLE} WHERE stored_at < ?", (cutoff,))
