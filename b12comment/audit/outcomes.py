"""Did the comment work: of the children whose elevated B12 got the comment,
how many had another B12 within N days, against the shadow decisions (the
rule decided, nothing was written) as the baseline. Aggregates only, small
cells suppressed.

- A child is their keyed identifiers: two rows that share one are the same
  child (an identifier added later links the rows on either side of it).
- An index is a B12 result that got the comment (shadow: would have), one
  per child and day of collection; a repeat is another B12 of the same child
  collected on a later day, at most N days after it (any source: the
  repeat need not have been commented, nor even elevated).
- An index counts for a window only once its N days have passed (`as_of`):
  a result commented last week has not yet had 56 days to be repeated in.
- The safety line: of the children who got the comment, how many had an
  abnormal result within SAFETY_DAYS after it (kept only where the context
  was on).
- A count from 1 to `min_cell` - 1 is shown as null, and so is a count of
  repeated (or of abnormal) whose complement is one of those: a share of a
  small group, or one a child or two from 0 % or 100 %, would tell about
  single children. (0 is shown: it is about no child.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, timedelta

from .recorder import SAFETY_DAYS
from .rows import SHADOW, AuditRow
from .store import Followup

DEFAULT_WINDOWS = (56, 180, 365)


class _People:
    """Union-find over keyed patient hashes."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def find(self, p: str) -> str:
        parent = self._parent.setdefault(p, p)
        while parent != p:
            grand = self._parent.setdefault(parent, parent)
            self._parent[p] = grand
            p, parent = parent, grand
        return p

    def join(self, hashes: Iterable[str]) -> str | None:
        roots = [self.find(h) for h in hashes]
        if not roots:
            return None
        first = roots[0]
        for r in roots[1:]:
            if r != first:
                self._parent[r] = first
        return first


def cell(n: int, m: int, min_cell: int, what: str = "repeated") -> dict:
    """One figure: n indexes, m of them with the event, the share; small
    cells as null."""
    if _small(n, min_cell) is None:
        return {"commented": None, what: None, "share": None}
    if _small(m, min_cell) is None or _small(n - m, min_cell) is None:
        return {"commented": n, what: None, "share": None}
    return {"commented": n, what: m, "share": round(m / n, 4) if n else None}


def outcomes(
    rows: Iterable[AuditRow],
    followups: Iterable[Followup] = (),
    *,
    as_of: date,
    windows: tuple[int, ...] = DEFAULT_WINDOWS,
    min_cell: int = 5,
    safety: bool = True,
) -> dict:
    people = _People()
    kept: list[tuple[AuditRow, date]] = []
    decisions = {"rows": 0, "commented": 0, "shadow": 0, "shadow_would_comment": 0, "no_collection_day": 0}
    rule_versions: dict[str, int] = defaultdict(int)
    for r in rows:
        decisions["rows"] += 1
        if r.source == SHADOW:
            decisions["shadow"] += 1
            decisions["shadow_would_comment"] += r.commented
        else:
            decisions["commented"] += r.commented
        rule_versions[r.rule_version] += 1
        people.join(r.patients)
        if not r.collected_day or not r.patients:
            decisions["no_collection_day"] += 1
            continue
        kept.append((r, date.fromisoformat(r.collected_day)))
    b12_days: dict[str, set[date]] = defaultdict(set)
    indexes: dict[str, set[tuple[str, date]]] = {"commented": set(), "shadow": set()}
    for r, d in kept:
        person = people.find(r.patients[0])
        b12_days[person].add(d)
        if r.commented:
            indexes["shadow" if r.source == SHADOW else "commented"].add((person, d))
    sorted_days = {p: sorted(ds) for p, ds in b12_days.items()}

    def repeated(person: str, d: date, n: int) -> bool:
        return any(d < other <= d + timedelta(days=n) for other in sorted_days[person])

    def figures(found: Iterable[tuple[str, date]]) -> list[dict]:
        found = list(found)
        out = []
        for n in windows:
            due = [(p, d) for p, d in found if d + timedelta(days=n) <= as_of]
            out.append({"days": n, **cell(len(due), sum(repeated(p, d, n) for p, d in due), min_cell)})
        return out

    months = sorted({d.strftime("%Y-%m") for group in indexes.values() for _, d in group})
    by_month = [
        {
            "month": m,
            "windows": figures(i for i in indexes["commented"] if i[1].strftime("%Y-%m") == m),
            "shadow": figures(i for i in indexes["shadow"] if i[1].strftime("%Y-%m") == m),
        }
        for m in months
    ]
    report: dict = {
        "as_of": as_of.isoformat(),
        "min_cell": min_cell,
        "windows": figures(indexes["commented"]),
        "shadow": figures(indexes["shadow"]),
        "by_month": by_month,
        "safety": None,
        "decisions": {k: _small(v, min_cell) for k, v in decisions.items()},
        "rule_versions": {k: _small(v, min_cell) for k, v in sorted(rule_versions.items())},
    }
    if safety:
        abnormal: dict[str, set[date]] = defaultdict(set)
        for f in followups:
            abnormal[people.find(f.patient)].add(date.fromisoformat(f.collected_day))
        due = [(p, d) for p, d in indexes["commented"] if d + timedelta(days=SAFETY_DAYS) <= as_of]
        hit = sum(any(d <= a <= d + timedelta(days=SAFETY_DAYS) for a in abnormal.get(p, ())) for p, d in due)
        report["safety"] = {"days": SAFETY_DAYS, **cell(len(due), hit, min_cell, "abnormal")}
    return report


def _small(n: int, min_cell: int) -> int | None:
    return None if 0 < n < min_cell else n
