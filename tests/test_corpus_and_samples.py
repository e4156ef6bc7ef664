"""Every real public message passes through unchanged; the samples get the
decisions the README promises; the cheap pre-check agrees with the full path."""

from __future__ import annotations

import hashlib
import json

import pytest
from paths import corpus_files, sample_files

from b12comment.core.engine import process
from b12comment.core.rule_config import RuleConfig
from b12comment.core.segments import read_header
from b12comment.wire.split import split_messages

RULE = RuleConfig()


def messages_of(path):
    return [p.data for p in split_messages(path.read_bytes()) if p.kind == "message"]


def test_corpus_is_the_one_its_manifest_describes(corpus_dir):
    """The files are the manifest's, byte for byte (sha256), and each holds
    messages of the type the manifest gives, so the corpus tests below run
    over what they claim to."""
    manifest = json.loads((corpus_dir.parent / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest) == 139
    assert {e["file"] for e in manifest} == {p.name for p in corpus_files()}
    for entry in manifest:
        data = (corpus_dir / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        messages = messages_of(corpus_dir / entry["file"])
        if entry["type"] == "(no MSH)":
            assert messages == [], entry["file"]
            continue
        types = {read_header(m).message_type for m in messages}
        expected = entry["type"].rstrip("^")[:7]
        assert any(t[:7] == expected for t in types), (entry["file"], entry["type"], types)


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_message_passes_unchanged(path):
    for message in messages_of(path):
        out, decision = process(message, RULE)
        assert out == message
        assert not decision.commented
        assert decision.reasons, "a message that is not commented says why"
        assert "internal_error" not in decision.reasons, decision.detail


@pytest.mark.parametrize("path", corpus_files() + sample_files(), ids=lambda p: p.name)
def test_precheck_agrees_with_full_path(path):
    for message in messages_of(path):
        fast = process(message, RULE)
        full = process(message, RULE, precheck=False)
        assert fast == full


EXPECTED = {
    "child_isolated_high_b12.hl7": [(True, ())],
    "child_b12_with_other_abnormal.hl7": [(False, ("other_abnormal",))],
    "adult_high_b12.hl7": [(False, ("adult",))],
    "infant_high_b12_no_range.hl7": [(True, ())],
    "teen_censored_b12.hl7": [(True, ())],
    "child_b12_pg_per_ml_latin1.hl7": [(True, ())],
    "adt_a01_child.hl7": [(False, ("not_oru",))],
    "night_batch_crlf.hl7": [(True, ()), (False, ("not_elevated",)), (False, ("status_not_final",))],
}


def test_every_sample_has_an_expectation():
    assert sorted(p.name for p in sample_files()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_decisions(name, tmp_path):
    from paths import SAMPLES

    got = []
    for message in messages_of(SAMPLES / name):
        out, d = process(message, RULE)
        got.append((d.commented, d.reasons))
        if d.commented:
            assert out != message and out.count(b"NTE|") == message.count(b"NTE|") + len(
                [r for r in d.results if r.commented]
            )
            again, d2 = process(out, RULE)
            assert again == out and d2.reasons == ("already_commented",)
        else:
            assert out == message
    assert got == EXPECTED[name]
