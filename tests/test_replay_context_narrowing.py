"""Replay's first pass keeps only the rows that can matter (replay/first_pass.py):
a differential against keeping every message's rows. Every message of the
corpus, the samples, generated archives whose patients recur (the same
identifier with an adult's and a child's birth date, or none) and crafted
cases is decided with both stores: the output bytes and the decisions must
be equal. Real files, real SQLite stores."""

from __future__ import annotations

import importlib.util
import random
import re
import sys
from pathlib import Path

import pytest
from builders import Obx, build
from paths import REPO, corpus_files, sample_files
from test_context import ALT_HIGH, LOW_PLATELETS, NORMAL_PLATELETS, b12_message, other_message

from b12comment.context import ContextStore
from b12comment.core.chain import decide
from b12comment.core.keys import keys as keys_of
from b12comment.core.keys import possible_keys
from b12comment.core.rows import extract
from b12comment.core.rule_config import RuleConfig
from b12comment.replay.first_pass import Reader, place_of
from b12comment.replay.first_pass import build as build_context
from b12comment.wire.split import open_input, read_pieces

RULE = RuleConfig()
# A rule that reads a second message type (as --compare-config's old rule may).
OLD_RULE = RuleConfig(message_types=("ORU^R01", "ORU^W01"))


def _generate():
    spec = importlib.util.spec_from_file_location("bench_generate", REPO / "bench" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_generate", module)  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    module.MIXES["children"] = module.Mix(0.3, 0.6)  # many children's B12 results, other results often abnormal
    return module


def _recurring(folder: Path, patients: int, seed: int) -> None:
    """Rewrite a generated archive so its patients recur: each PID-3
    identifier is one of `patients`, whatever birth date the message gives;
    some requisitions recur too."""
    rng = random.Random(seed)
    pid3 = re.compile(rb"\rPID\|1\|\|(\d{10})")
    req = re.compile(rb"\|REQ(\d+)-")
    for path in sorted(folder.rglob("*.hl7")):
        data = pid3.sub(lambda m: b"\rPID|1||%010d" % rng.randrange(patients), path.read_bytes())
        data = req.sub(lambda m: b"|REQ%d-" % (int(m.group(1)) // 3), data)
        path.write_bytes(data)


def crafted() -> list[bytes]:
    """Cases where only rows the adult filter would drop can veto, and odd shapes."""
    child = "0303039999^^^CPR"
    return [
        # the abnormal result in a message whose birth date says adult, same identifier
        other_message(ALT_HIGH, patient_id=child, birth="19700101", orc4="REQ-A", control_id="ADULT-ALT"),
        b12_message(patient_id=child, orc4="REQ-B", control_id="CHILD-B12"),
        # no birth date, then an odd one, both with abnormal results of the same patient
        other_message(LOW_PLATELETS, patient_id="0404049999^^^CPR", birth="", orc4="R-C", control_id="NOBIRTH"),
        b12_message(patient_id="0404049999^^^CPR", orc4="R-D", control_id="B12-NOBIRTH"),
        other_message(ALT_HIGH, patient_id="0505059999^^^CPR", birth="2O1O", orc4="R-E", control_id="ODDBIRTH"),
        b12_message(patient_id="0505059999^^^CPR", orc4="R-F", control_id="B12-ODD"),
        # the same requisition of the same identifier, under an adult's birth date, with a pending order
        # (a requisition is its patient's: another patient's number SHARED would be another requisition)
        other_message(NORMAL_PLATELETS, patient_id="0707079999^^^CPR", birth="19600101", obr25="P", orc4="SHARED"),
        b12_message(patient_id="0707079999^^^CPR", orc4="SHARED", control_id="B12-SHAREDREQ"),
        # repetitions in PID-3: the second identifier is the one shared
        other_message(ALT_HIGH, patient_id="X1^^^LOCAL~0808089999^^^CPR", birth="19500101", control_id="REP"),
        b12_message(patient_id="0808089999^^^CPR", orc4="R-G", control_id="B12-REP"),
        # LF line ends and other encoding characters
        other_message(ALT_HIGH, patient_id="0909099999^^^CPR", birth="19800101", term=b"\n", control_id="LF"),
        b12_message(patient_id="0909099999^^^CPR", orc4="R-H", control_id="B12-LF", term=b"\r\n"),
        other_message(ALT_HIGH, patient_id="1010109999^^^CPR", birth="19800101", fs="#", enc="$*!@", control_id="D"),
        b12_message(patient_id="1010109999^^^CPR", orc4="R-I", control_id="B12-DELIMS", enc="^~\\&#"),
        # a B12 alone (unique keys), an adult's B12, a child's B12 later vetoed by a later message
        b12_message(patient_id="1111119999^^^CPR", orc4="R-J", control_id="B12-ALONE"),
        b12_message(patient_id="1212129999^^^CPR", birth="19700101", orc4="R-K", control_id="B12-ADULT"),
        b12_message(patient_id="1313139999^^^CPR", orc4="R-L", control_id="B12-LATER"),
        other_message(ALT_HIGH, patient_id="1313139999^^^CPR", birth="19700101", orc4="R-M", control_id="LATER"),
        # an ORU^W01 (only the old rule looks at it) sharing a patient with a child's B12
        build(with_b12=False, others=(ALT_HIGH,), msh9="ORU^W01", patient_id="1414149999^^^CPR", orc4="R-N"),
        b12_message(patient_id="1414149999^^^CPR", orc4="R-O", control_id="B12-W01"),
        build(others=(Obx(),), patient_id="", placer="", filler="", control_id="B12-NOKEYS"),
        # a child's B12 in an ORU^W01, which only the old rule reads, and the patient's ALT in an ORU^R01
        build(msh9="ORU^W01", patient_id="1515159999^^^CPR", orc4="R-P", control_id="B12-W01-OLD"),
        other_message(ALT_HIGH, patient_id="1515159999^^^CPR", birth="19700101", orc4="R-Q", control_id="ALT-P"),
    ]


def messages_of(files: list[str]) -> list[tuple[int, int, bytes]]:
    found = []
    for index, src in enumerate(files):
        position = 0
        with open_input(src) as fin:
            for piece in read_pieces(fin):
                if piece.kind == "message":
                    position += 1
                    found.append((index, position, piece.data))
    return found


def decisions(tmp: Path, files: list[str], every_message: bool, mode: str, rules: list) -> tuple[list, int]:
    """Every message's (output, decision) under each rule; the rows kept."""
    path = tmp / ("every.sqlite3" if every_message else "narrow.sqlite3")
    ctx = build_context(path, files, rules, mode, 30.0, every_message=every_message)
    reader = Reader(ctx)
    try:
        out = []
        for index, position, message in messages_of(files):
            for rule in rules:
                outcome = reader.decide(index, position, message, rule)
                out.append((index, position, outcome.output, outcome.decision))
                if every_message:  # the shells' one way to decide, on the store of every row
                    same = decide(
                        reader.store, place_of(index, position), message, rule, mode, 30.0, record=False, watch=False
                    )
                    assert (same.output, same.decision) == (outcome.output, outcome.decision)
        rows = ContextStore(ctx.path, ctx.key).count()
    finally:
        reader.close()
    return out, rows


def assert_same(tmp: Path, files: list[str], mode: str = "patient", rules=(RULE, OLD_RULE)) -> tuple[list, int, int]:
    """The rows are the first rule's; every message is decided under each."""
    tmp.mkdir(parents=True, exist_ok=True)
    full, full_rows = decisions(tmp, files, True, mode, list(rules))
    narrow, narrow_rows = decisions(tmp, files, False, mode, list(rules))
    assert len(full) == len(narrow) > 0
    for a, b in zip(full, narrow, strict=True):
        assert a == b, (files[a[0]], a[1], a[3], b[3])
    return full, full_rows, narrow_rows


def vetoed(found: list) -> set[str]:
    return {d.control_id for _, _, _, d in found if d.vetoed_by}


def test_crafted_cases_decide_the_same_and_adult_looking_rows_veto(tmp_path):
    src = tmp_path / "crafted.hl7"
    src.write_bytes(b"".join(crafted()))
    found, full_rows, narrow_rows = assert_same(tmp_path, [str(src)], rules=(OLD_RULE, RULE))
    got = vetoed(found)
    # vetoes that only rows of an adult-looking, undated or oddly dated message give
    assert {"CHILD-B12", "B12-NOBIRTH", "B12-ODD", "B12-SHAREDREQ", "B12-REP", "B12-LF", "B12-LATER"} <= got
    assert "B12-W01" in got  # the ORU^W01's ALT: kept because the first rule reads that type
    assert not {"B12-ALONE", "B12-NOKEYS"} & got
    commented = {d.control_id for _, _, _, d in found if d.commented}
    assert "B12-ALONE" in commented
    # no patient identifier: its look-back cannot be asked, so no comment in patient mode
    assert {d.reasons for _, _, _, d in found if d.control_id == "B12-NOKEYS"} == {("context_unavailable",)}
    assert narrow_rows < full_rows  # the unshared messages gave no rows


def test_corpus_and_samples_decide_the_same(tmp_path):
    files = [str(p) for p in corpus_files() + sample_files()]
    assert len(files) > 100
    assert_same(tmp_path, files)


def _archive(gen, folder: Path, n: int, mix: str, patients: int) -> list[str]:
    gen.generate(folder, n, seed=5, per_file=max(n // 3, 1), mix=mix)
    _recurring(folder, patients, seed=len(mix))
    return [str(p) for p in sorted(folder.rglob("*.hl7"))]


@pytest.mark.slow
def test_generated_archives_with_recurring_patients_decide_the_same(tmp_path):
    gen = _generate()
    total_vetoes = 0
    for mix, n, patients in (("children", 250, 30), ("team", 200, 30), ("dense", 60, 15)):
        files = _archive(gen, tmp_path / mix, n, mix, patients)
        found, full_rows, narrow_rows = assert_same(tmp_path / mix, files)
        total_vetoes += len(vetoed(found))
        assert narrow_rows <= full_rows
    assert total_vetoes > 10  # the context decides many of these: the comparison has teeth


@pytest.mark.slow
def test_larger_generated_archives_with_recurring_patients_decide_the_same(tmp_path):
    gen = _generate()
    for mix, n, patients in (
        ("children", 4000, 300),
        ("team", 4000, 500),
        ("realistic", 4000, 200),
        ("dense", 800, 100),
    ):
        files = _archive(gen, tmp_path / mix, n, mix, patients)
        assert_same(tmp_path / mix, files)


def test_generated_archive_of_unique_patients_keeps_no_rows_and_decides_the_same(tmp_path):
    gen = _generate()
    folder = tmp_path / "children"
    gen.generate(folder, 500, seed=9, per_file=200, mix="children")
    files = [str(p) for p in sorted(folder.rglob("*.hl7"))]
    found, full_rows, narrow_rows = assert_same(tmp_path, files)
    assert any(d.commented for _, _, _, d in found)
    assert full_rows > 500 and narrow_rows == 0  # every patient and requisition once: nothing can veto


def test_the_old_rule_looks_up_what_only_it_reads(tmp_path):
    """--compare-with: the old rule reads ORU^W01, the store's rows are the
    new rule's; the W01 child's B12 is still decided with its patient's rows."""
    src = tmp_path / "crafted.hl7"
    src.write_bytes(b"".join(crafted()))
    found, _, _ = assert_same(tmp_path, [str(src)], rules=(RULE, OLD_RULE))
    old = [d for _, _, _, d in found if d.control_id == "B12-W01-OLD"]
    assert len(old) == 2  # (the new rule: not a type it reads; the old rule: vetoed by the ALT)
    assert old[0].reasons == ("not_oru",) and old[1].vetoed_by == ("ALT-P",)


def test_requisition_mode_decides_the_same(tmp_path):
    src = tmp_path / "crafted.hl7"
    src.write_bytes(b"".join(crafted()))
    found, _, _ = assert_same(tmp_path, [str(src)], mode="requisition")
    assert "B12-SHAREDREQ" in vetoed(found)


def test_possible_keys_hold_every_key_of_the_rows():
    gen = _generate()
    rng = random.Random(3)
    day = gen.date(2026, 11, 1)
    messages = crafted() + [gen.message(n, rng, day) for n in range(300)]
    for path in corpus_files() + sample_files():
        messages += [m for _, _, m in messages_of([str(path)])]
    messages += [m.replace(b"\rPID|", b"\rPIDX|") for m in messages[:50]]  # a name read by its 3 bytes
    messages += [m.replace(b"\r", b"\n") for m in messages[:50]]
    messages.append(build(others=(NORMAL_PLATELETS,) * 10_001, orc4="BIG"))  # too many segments to read
    with_rows = 0
    for message in messages:
        found = possible_keys(message)
        assert found is not None
        for rule in (RULE, OLD_RULE):
            typed = keys_of(message, rule)  # the keys under a rule that reads the message: the same reader's
            assert typed is None or set(found) >= typed.patients | typed.requisitions
            ex = extract(message, rule, 30.0, skip_adults=False)
            if ex is None:
                continue
            with_rows += bool(ex.rows)
            keys = {k for r in ex.rows for k in r.patient_keys} | {r.requisition_key for r in ex.rows}
            assert keys - {b""} <= set(found), message[:80]
    assert with_rows > 300


def test_seq_orders_files_then_positions():
    assert place_of(0, 1) < place_of(0, 2) < place_of(1, 1)
    assert place_of(3, 7) >> 32 == 4


def test_the_scratch_file_holds_no_identifier_is_private_and_is_removed(tmp_path, monkeypatch):
    from b12comment.replay import first_pass as replay_context

    src = tmp_path / "crafted.hl7"
    src.write_bytes(b"".join(crafted()))
    for seed in ("random", "0"):  # PYTHONHASHSEED fixed: the hash is keyed with the run's key instead
        monkeypatch.setenv("PYTHONHASHSEED", seed)
        hash_of = replay_context._key_hash(b"k" * 32)
        assert (hash_of is hash) is (seed == "random")
        scratch = tmp_path / f"scratch-{seed}"
        kept = replay_context._kept([str(src)], [RULE], scratch, hash_of)
        assert kept  # the crafted patients share keys
        data = scratch.read_bytes()
        assert len(data) > 0 and oct(scratch.stat().st_mode & 0o777) == "0o600"
        for ident in (b"0303039999", b"0808089999", b"REQ-A", b"SHARED", b"CPR"):
            assert ident not in data
        found, _, _ = assert_same(tmp_path / seed, [str(src)])
        assert "CHILD-B12" in vetoed(found)
        assert not [p for p in (tmp_path / seed).iterdir() if p.name.endswith("-keys")]  # the scratch file removed


def test_the_type_test_of_the_first_pass_holds_every_type_the_engine_reads():
    from b12comment.core.engine import process
    from b12comment.replay.first_pass import _result_line

    rule = RuleConfig(message_types=("ORU^R01", "XSS^R01"))
    may_be = _result_line([rule])
    for msh9, reads in (("ORU^R01", True), ("oru^r01", True), ("X\xdf^R01", True), ("ADT^A01", False)):
        message = build(msh9=msh9, encoding="latin-1")
        assert process(message, rule)[1].reasons != ("not_oru",) or not reads
        assert may_be(message) or not reads, msh9
    assert not may_be(build(msh9="ADT^A01"))


def test_a_process_opens_the_store_once_for_all_its_files(tmp_path):
    from b12comment.replay.first_pass import _READERS, close_readers, reader_for

    src = tmp_path / "crafted.hl7"
    src.write_bytes(b"".join(crafted()))
    ctx = build_context(tmp_path / "store.sqlite3", [str(src)], [RULE], "patient", 30.0)
    first = reader_for(ctx)
    assert reader_for(ctx) is first and len(_READERS) == 1
    assert first.decide(0, 2, crafted()[1], RULE).decision.vetoed_by == ("ADULT-ALT",)
    close_readers()
    assert not _READERS and reader_for(ctx) is not first
    close_readers()


@pytest.mark.parametrize("counted, kept", [(3, 10**9), (10**9, 3), (0, 0)])
def test_past_the_memory_bounds_more_is_kept_and_decisions_stay_the_same(tmp_path, monkeypatch, counted, kept):
    from b12comment.replay import first_pass as replay_context

    monkeypatch.setattr(replay_context, "MAX_COUNTED", counted)
    monkeypatch.setattr(replay_context, "MAX_KEPT", kept)
    gen = _generate()
    files = _archive(gen, tmp_path / "children", 120, "children", 15)
    src = tmp_path / "crafted.hl7"
    src.write_bytes(b"".join(crafted()))
    found, full_rows, narrow_rows = assert_same(tmp_path / "run", [str(src), *files])
    assert narrow_rows == full_rows if kept <= 3 else narrow_rows <= full_rows
    assert "CHILD-B12" in vetoed(found)
