"""The audit and the outcomes: a synthetic archive replayed with --audit
(shadow first, then with the comment on), children with known repeat B12s
at known intervals; counts and shares known in advance, windows and month
boundaries included. No patient field reaches the store or an export.
Real files, real SQLite, the real command line (in process)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from builders import Obx, build

from b12comment.audit import AuditError, Followup, SQLiteAuditStore, open_audit
from b12comment.audit.outcomes import outcomes
from b12comment.audit.rows import AuditRow
from b12comment.audit.store import COLUMNS, row_values
from b12comment.cli import main
from b12comment.context.store import load_key

ALT_HIGH = Obx(code="1742-6^ALT^LN", value="300", units="U/L", range="10-45", flags="H")


class Archive:
    """Messages of invented children, and every identifier, name and birth
    date written into them (for the byte search)."""

    def __init__(self) -> None:
        self.files: dict[str, list[bytes]] = {}
        self.secrets: set[str] = set()
        self.n = 0

    def child(self) -> tuple[str, str, str]:
        self.n += 1
        ident = f"{7100000000 + self.n * 37}"
        name = f"Aalborgsen^Kirsten{self.n:03d}"
        birth = f"2014{(self.n % 12) + 1:02d}{(self.n % 27) + 1:02d}"
        self.secrets.update({ident, name.split("^")[0], f"Kirsten{self.n:03d}", birth})
        return ident, name, birth

    def add(self, file: str, child, day: date, *, value="1500", range="", flags="", others=(), b12=True) -> None:
        ident, name, birth = child
        self.n += 1
        ctrl = f"M{self.n:05d}"
        message = build(
            patient_id=f"{ident}^^^CPR",
            patient_name=name,
            birth=birth,
            collected=day.strftime("%Y%m%d") + "0830",
            control_id=ctrl,
            placer=f"P{self.n:05d}",
            filler=f"F{self.n:05d}",
            value=value,
            range=range,
            flags=flags,
            others=others,
            with_b12=b12,
        )
        self.files.setdefault(file, []).append(message)

    def elevated(self, file, child, day):  # an isolated elevated B12: the comment (age band 1200)
        self.add(file, child, day)

    def repeat(self, file, child, day):  # a B12 that is not elevated: audited, never an index
        self.add(file, child, day, value="400", range="200-900")

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True)
        for name, messages in self.files.items():
            (folder / name).write_bytes(b"".join(messages))
        return folder


D = timedelta
# The archive's years follow the clock, so that the store's retention (730
# days, counted from today) never purges it: the shadow months are the last
# two of last year, the live months the first two of this year.
Y = date.today().year
JAN, FEB = date(Y, 1, 31), date(Y, 2, 1)  # either side of a month boundary
NOV, DEC = date(Y - 1, 11, 30), date(Y - 1, 12, 1)
AS_OF = date(Y + 1, 3, 1).isoformat()  # every window of every result has passed
MONTHS = tuple(d.strftime("%Y-%m") for d in (NOV, DEC, JAN, FEB))


def shadow_archive(a: Archive) -> None:
    """November and December 2024, replayed with --dry-run --audit."""
    nov, dec = NOV, DEC
    for i in range(10):
        c = a.child()
        a.elevated("s1.hl7", c, nov)
        if i < 6:
            a.repeat("s2.hl7", c, nov + D(30))
    for i in range(10):
        c = a.child()
        a.elevated("s1.hl7", c, dec)
        a.repeat("s2.hl7", c, dec + (D(10) if i < 5 else D(200)))


def live_archive(a: Archive) -> None:
    """January and February 2025 with the comment on (replay --out --audit),
    and what follows in later files."""
    jan, feb = JAN, FEB
    for i in range(15):
        c = a.child()
        a.elevated("l1.hl7", c, jan)
        if i < 5:
            a.repeat("l2.hl7", c, jan + D(56))  # the last day of the 56-day window
        elif i < 10:
            a.repeat("l2.hl7", c, jan + D(57))  # the first day after it
        if i < 6:
            a.add("l3.hl7", c, jan + D(60), others=(ALT_HIGH,), b12=False)  # the safety line
        elif i == 6:
            a.add("l3.hl7", c, jan + D(91), others=(ALT_HIGH,), b12=False)  # after its 90 days
    for i in range(15):
        c = a.child()
        a.elevated("l1.hl7", c, feb)
        a.repeat("l2.hl7", c, feb + (D(180) if i < 5 else D(181) if i < 10 else D(366)))
    for _ in range(4):  # children whose B12 got no comment (another result abnormal): never an index
        c = a.child()
        a.add("l1.hl7", c, jan, others=(ALT_HIGH,))
        a.repeat("l2.hl7", c, jan + D(20))
    adult = ("7999999999", "Voksen^Anders", "19700101")
    a.secrets.update({"7999999999", "Voksen", "Anders", "19700101"})
    a.elevated("l1.hl7", adult, jan)  # not a child: not audited at all


def write_config(tmp: Path, **audit) -> Path:
    settings = {"path": str(tmp / "audit.sqlite3"), "key_file": str(tmp / "audit.key"), **audit}
    lines = ["[audit]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    lines += ["[context]", f'store = "{tmp / "context.sqlite3"}"', f'key_file = "{tmp / "context.key"}"']
    path = tmp / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """The shadow months replayed dry, then the live months with the comment
    (once for the module: the tests only read the store)."""
    tmp_path = tmp_path_factory.mktemp("audit")
    a = Archive()
    shadow_archive(a)
    shadow = a.write(tmp_path / "shadow")
    b = Archive()
    b.n = a.n
    live_archive(b)
    live = b.write(tmp_path / "live")
    cfg = write_config(tmp_path)
    args = ("--config", str(cfg), "--workers", "1", "--quiet", "--audit")
    assert main(["replay", str(shadow), "--dry-run", *args]) == 0
    assert main(["replay", str(live), "--out", str(tmp_path / "out"), *args]) == 0
    return tmp_path, cfg, a.secrets | b.secrets


def share(m: int, n: int) -> float:
    return round(m / n, 4)


def test_outcomes_of_the_synthetic_archive_are_exactly_the_known_figures(replayed, capsys):
    tmp, cfg, _ = replayed
    code, out, _ = cli("outcomes", "--config", str(cfg), "--json", "--as-of", AS_OF, capsys=capsys)
    assert code == 0
    report = json.loads(out)
    assert report["windows"] == [
        {"days": 56, "commented": 30, "repeated": 5, "share": share(5, 30)},
        {"days": 180, "commented": 30, "repeated": 15, "share": 0.5},
        {"days": 365, "commented": 30, "repeated": 20, "share": share(20, 30)},
    ]
    assert report["shadow"] == [
        {"days": 56, "commented": 20, "repeated": 11, "share": 0.55},
        {"days": 180, "commented": 20, "repeated": 11, "share": 0.55},
        {"days": 365, "commented": 20, "repeated": None, "share": None},  # 16 of 20: 4 not repeated is small
    ]
    months = {m["month"]: m for m in report["by_month"]}
    nov, dec, jan, feb = MONTHS
    assert sorted(months) == [nov, dec, jan, feb]
    # 2024-11: 6 of 10 repeated; 4 not repeated is a small cell, so the 6 is suppressed too.
    assert months[nov]["shadow"][0] == {"days": 56, "commented": 10, "repeated": None, "share": None}
    assert months[nov]["windows"][0] == {"days": 56, "commented": 0, "repeated": 0, "share": None}
    assert [c["repeated"] for c in months[dec]["shadow"]] == [5, 5, 10]
    assert months[dec]["shadow"][2]["share"] == 1.0
    # the 56th day is inside the window, the 57th outside; the 180th inside, the 181st outside
    assert [(c["commented"], c["repeated"]) for c in months[jan]["windows"]] == [(15, 5), (15, 10), (15, 10)]
    assert [(c["commented"], c["repeated"]) for c in months[feb]["windows"]] == [(15, 0), (15, 5), (15, 10)]
    assert report["safety"] == {"days": 90, "commented": 30, "abnormal": 6, "share": 0.2}
    assert report["decisions"]["rows"] == 20 + 16 + 30 + 25 + 4 + 4  # every child's B12, no adult's
    assert report["decisions"]["commented"] == 30
    assert report["decisions"]["shadow_would_comment"] == 20


def test_a_window_counts_only_once_it_has_passed(replayed, capsys):
    tmp, cfg, _ = replayed
    as_of = (JAN + D(180)).isoformat()
    code, out, _ = cli("outcomes", "--config", str(cfg), "--json", "--as-of", as_of, capsys=capsys)
    report = json.loads(out)
    # January's children count for 180 days on the 180th day after, February's (a day later) not yet.
    assert report["windows"][1] == {"days": 180, "commented": 15, "repeated": 10, "share": share(10, 15)}
    assert report["windows"][2] == {"days": 365, "commented": 0, "repeated": 0, "share": None}
    code, out, _ = cli("outcomes", "--config", str(cfg), "--json", "--as-of", AS_OF, "--days", "57", capsys=capsys)
    assert json.loads(out)["windows"] == [{"days": 57, "commented": 30, "repeated": 10, "share": share(10, 30)}]


def test_small_cells_are_suppressed_and_configurable(replayed, capsys):
    tmp, cfg, _ = replayed
    args = ("outcomes", "--config", str(cfg), "--json", "--as-of", AS_OF)
    report = json.loads(cli(*args, "--min-cell", "11", capsys=capsys)[1])
    assert report["windows"][0] == {"days": 56, "commented": 30, "repeated": None, "share": None}  # 5 < 11
    assert report["shadow"][0] == {"days": 56, "commented": 20, "repeated": None, "share": None}  # 20 - 11 = 9
    months = {m["month"]: m for m in report["by_month"]}
    nov = MONTHS[0]
    assert months[nov]["shadow"][0]["commented"] is None  # 10 < 11
    report = json.loads(cli(*args, "--min-cell", "0", capsys=capsys)[1])
    months = {m["month"]: m for m in report["by_month"]}
    assert months[nov]["shadow"][0] == {"days": 56, "commented": 10, "repeated": 6, "share": 0.6}


def test_no_patient_field_in_the_store_or_an_export(replayed, capsys):
    tmp, cfg, secrets = replayed
    assert len(secrets) > 100
    exports = []
    for fmt in ("--json", "--csv"):
        code, out, _ = cli(
            "audit", "export", "--config", str(cfg), "--from", "2000-01-01", "--to", "2100-01-01", fmt, capsys=capsys
        )
        assert code == 0
        exports.append(out.encode())
    rows = json.loads(exports[0])
    assert len(rows) == 99 and {r["source"] for r in rows} == {"shadow", "replay"}
    assert len(list(csv.DictReader(io.StringIO(exports[1].decode())))) == 99
    html = tmp / "outcomes-test.html"
    assert cli("outcomes", "--config", str(cfg), "--html", str(html), capsys=capsys)[0] == 0
    files = [p.read_bytes() for p in tmp.glob("audit.sqlite3*")]
    assert files and sum(len(f) for f in files) > 10_000
    for blob in files + exports + [html.read_bytes()]:
        found = [s for s in secrets if s.encode() in blob]
        assert not found, found[:5]


def test_an_export_covers_the_days_asked_for(replayed, capsys):
    tmp, cfg, _ = replayed
    today = time.strftime("%Y-%m-%d", time.gmtime())
    code, out, _ = cli("audit", "export", "--config", str(cfg), "--from", today, "--to", today, "--json", capsys=capsys)
    rows = json.loads(out)
    assert len(rows) == 99
    row = next(r for r in rows if r["commented"] and r["source"] == "replay")
    assert row["age_band"] == "1-11 y" and row["value_pmol_l"] == 1500.0 and row["limit_pmol_l"] == 1200.0
    assert row["limit_source"] == "age_band" and row["rule_version"] == "b12-paed-2" and row["sending_facility"]
    assert len(row["config_digest"]) == 16 and row["collected"].startswith(str(Y))
    vetoed = [r for r in rows if "other_abnormal" in r["reasons"]]
    assert len(vetoed) == 4 and not any(r["commented"] for r in vetoed)
    assert {json.dumps(r["blocked_by"]) for r in vetoed} == {
        json.dumps(
            [{"source": "message", "control_id": "", "obx": 2, "code": "1742-6", "system": "LN", "verdict": "abnormal"}]
        )
    }
    assert all(r["blocked_by"] == [] for r in rows if r["commented"])
    yesterday = (date.fromisoformat(today) - D(1)).isoformat()
    out = cli("audit", "export", "--config", str(cfg), "--to", yesterday, "--json", capsys=capsys)[1]
    assert json.loads(out) == []


def row(patients, day, *, commented=True, source="replay", decided_at=None) -> AuditRow:
    return AuditRow(
        decided_at=time.time() if decided_at is None else decided_at,
        source=source,
        control_id="C",
        sending_facility="LAB",
        rule_version="b12-paed-2",
        config_digest="0" * 16,
        obx_index=1,
        age_band="1-11 y",
        value_pmol_l=1500.0,
        comparator="",
        limit_pmol_l=1200.0,
        limit_source="age_band",
        commented=commented,
        reasons=() if commented else ("not_elevated",),
        vetoed_by=(),
        collected=day.replace("-", ""),
        collected_day=day,
        patients=tuple(patients),
        requisition="r",
    )


def test_a_child_is_every_identifier_they_share():
    """An identifier added at the repeat (a second PID-3) still links it."""
    rows = [row([f"a{i}"], "2025-01-01") for i in range(5)]
    rows += [row([f"a{i}", f"b{i}"], "2025-01-20", commented=False) for i in range(5)]
    rows += [row([f"b{i}"], "2025-01-30", commented=False) for i in range(5)]
    report = outcomes(rows, as_of=date(2026, 1, 1), windows=(10, 56), min_cell=0)
    assert [(c["commented"], c["repeated"]) for c in report["windows"]] == [(5, 0), (5, 5)]


def test_retention_purges_on_time(tmp_path):
    key = load_key(tmp_path / "k")
    store = SQLiteAuditStore(tmp_path / "a.sqlite3", key)
    now = time.time()
    today = date.today()
    store.add(
        [
            row(["old"], today.isoformat(), decided_at=now - 731 * 86400),  # decided too long ago
            row(["kept"], today.isoformat(), decided_at=now - 729 * 86400),
            row(["collected"], (today - D(740)).isoformat(), decided_at=now),  # replayed today, collected long ago
            row(["new"], today.isoformat(), decided_at=now),
        ]
    )
    store.add_followups([Followup("old", (today - D(740)).isoformat(), "X"), Followup("new", today.isoformat(), "Y")])
    assert store.purge(730, now=now) == 2
    assert sorted(r.patients[0] for r in store.decisions()) == ["kept", "new"]
    assert [f.patient for f in store.followups()] == ["new"]
    assert store.purge(730, now=now) == 0
    store.close()


def test_replay_purges_the_store_to_its_retention(tmp_path, capsys):
    cfg = write_config(tmp_path, retention_days=30)
    key = load_key(tmp_path / "audit.key", "audit")
    store = open_audit(str(tmp_path / "audit.sqlite3"), key)
    store.add([row(["gone"], date.today().isoformat(), decided_at=time.time() - 31 * 86400)])
    store.close()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "m.hl7").write_bytes(build())
    assert cli("replay", str(tmp_path / "in"), "--dry-run", "--audit", "--config", str(cfg), capsys=capsys)[0] == 0
    db = sqlite3.connect(tmp_path / "audit.sqlite3")
    assert db.execute("SELECT source, collected_day FROM decisions").fetchall() == [("shadow", "2024-01-10")]


def test_another_key_is_refused_not_mixed(tmp_path, capsys):
    cfg = write_config(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "m.hl7").write_bytes(build())
    args = ("replay", str(tmp_path / "in"), "--dry-run", "--audit", "--config", str(cfg))
    assert cli(*args, capsys=capsys)[0] == 0
    (tmp_path / "audit.key").unlink()  # a new key is made: the same child would get another hash
    code, _, err = cli(*args, capsys=capsys)
    assert code == 1
    assert "written with another key" in err and err.count("\n") == 1
    with pytest.raises(AuditError):
        open_audit(str(tmp_path / "audit.sqlite3"), load_key(tmp_path / "audit.key"))
    assert len(list(open_audit(str(tmp_path / "audit.sqlite3"), None, read_only=True).decisions())) == 1


def test_the_store_is_0600(tmp_path):
    store = open_audit(str(tmp_path / "a.sqlite3"), load_key(tmp_path / "k"))
    store.close()
    assert (tmp_path / "a.sqlite3").stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_serve_and_its_http_endpoint_record_every_child_b12_and_the_safety_line(tmp_path):
    """serve (a subprocess, MLLP and HTTP on real sockets): a child's B12 through
    each, an adult's (not recorded), then abnormal ALTs 40 days later of the
    children who got the comment, whichever way (the safety line), and of a
    child who got none (not kept)."""
    import http.client

    from http_helpers import post
    from service_helpers import Downstream, MllpConnection, Serve, msa, write_config

    a = Archive()
    child, other, third = a.child(), a.child(), a.child()
    a.elevated("m", child, date(2026, 3, 2))
    a.add("m", ("7999999999", "Voksen^Anders", "19700101"), date(2026, 3, 2))
    a.add("m", child, date(2026, 4, 11), others=(ALT_HIGH,), b12=False)  # 40 days on: the safety line
    a.add("m", other, date(2026, 4, 11), others=(ALT_HIGH,), b12=False)  # commented through HTTP
    a.add("m", third, date(2026, 4, 11), others=(ALT_HIGH,), b12=False)  # no comment before: not kept
    a.elevated("h", other, date(2026, 3, 3))
    audit = tmp_path / "audit.sqlite3"
    with Downstream() as down:
        cfg = write_config(
            tmp_path / "config.toml",
            listener=dict(port=0),
            http=dict(enabled=True, port=0),
            journal=dict(path=str(tmp_path / "journal.sqlite3")),
            downstream=dict(url=down.url, timeout_s=2.0, retry_initial_s=0.05, retry_max_s=0.2),
            context=dict(store=str(tmp_path / "context.sqlite3"), key_file=str(tmp_path / "context.key")),
            audit=dict(enabled=True, path=str(audit), key_file=str(tmp_path / "audit.key")),
        )
        with Serve(cfg) as serve:
            assert serve.wait_record("http_listening"), serve.stderr
            port = serve.records("http_listening")[0]["port"]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            answer = post(conn, a.files["h"][0])
            assert answer.status == 200 and answer.headers["x-b12comment-decision"] == "commented"
            with MllpConnection(serve.port) as mllp:
                for m in a.files["m"]:
                    assert msa(mllp.send(m))[0] == "AA"
            assert down.wait_for(5), serve.stderr
            assert serve.wait_record("decision", 5), serve.stderr
            assert serve.stop() == 0, serve.stderr
    store = open_audit(str(audit), None, read_only=True)
    rows = list(store.decisions())
    assert sorted((r.source, r.commented, r.collected_day) for r in rows) == [
        ("http", True, "2026-03-03"),
        ("serve", True, "2026-03-02"),
    ]
    followups = store.followups()
    assert sorted(f.patient for f in followups) == sorted(r.patients[0] for r in rows)
    assert {f.collected_day for f in followups} == {"2026-04-11"}
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("audit.sqlite3*"))
    assert not [s for s in a.secrets | {"7999999999", "Voksen", "19700101"} if s.encode() in blob]


@pytest.mark.parametrize(
    "args, code, says",
    [
        (("outcomes",), 1, "no audit store at"),
        (("outcomes", "--days", "56,x"), 2, "--days must be whole numbers"),
        (("outcomes", "--days", "0"), 2, "--days must be whole numbers"),
        (("outcomes", "--as-of", "March"), 2, "--as-of must be a date"),
        (("audit", "export", "--from", "2026-13-01"), 2, "--from must be a date"),
        (("audit", "export", "--from", "2026-02-01", "--to", "2026-01-01"), 2, "--to is before --from"),
    ],
)
def test_command_errors_are_one_line(tmp_path, capsys, args, code, says):
    cfg = write_config(tmp_path)
    got, out, err = cli(*args, "--config", str(cfg), capsys=capsys)
    assert (got, out) == (code, "")
    assert says in err and err.count("\n") == 1 and err.startswith("b12comment: ")


def test_a_store_of_the_first_version_gains_the_blockers_column(tmp_path):
    key = load_key(tmp_path / "k")
    open_audit(str(tmp_path / "a.sqlite3"), key).close()
    db = sqlite3.connect(tmp_path / "a.sqlite3")
    db.execute("ALTER TABLE decisions DROP COLUMN blocked_by")
    db.execute(
        f"INSERT INTO decisions ({COLUMNS.replace(', blocked_by', '')}) VALUES ({','.join('?' * 19)})",
        row_values(row(["old"], "2026-01-01"))[:19],
    )
    db.commit()
    db.close()
    reader = open_audit(str(tmp_path / "a.sqlite3"), None, read_only=True)  # read as it is
    assert [r.blocked_by for r in reader.decisions()] == [()]
    reader.close()
    store = open_audit(str(tmp_path / "a.sqlite3"), key)
    store.add([row(["p"], "2026-01-01")])
    assert [r.blocked_by for r in store.decisions()] == [(), ()]
    store.close()
