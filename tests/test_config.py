"""The shipped config.toml and the built-in defaults are the same; bad
configuration stops with a message naming the file and the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from paths import REPO

from b12comment.config import Config, ConfigError, load_config, parse_config


def test_shipped_config_equals_builtin_defaults():
    shipped = load_config(REPO / "config.toml")
    assert dataclasses.replace(shipped, source="") == dataclasses.replace(Config(), source="")


def test_no_config_file_gives_defaults():
    assert load_config(None) == Config()


def test_changed_value_is_read():
    cfg = parse_config('[rule]\nlanguage = "en"\n[[rule.codes]]\ncode = "VB12"\nsystems = ["L"]\n')
    assert cfg.rule.language == "en"
    assert [c.code for c in cfg.rule.codes] == ["VB12"]
    assert cfg.rule.age_bands == Config().rule.age_bands


@pytest.mark.parametrize(
    "text, names",
    [
        ('[rule]\nlangauge = "en"\n', "[rule.langauge] is not a known setting"),
        ('[rule]\nlanguage = "fr"\n', "[rule.language]"),
        ('[listener]\nport = "2575"\n', "[listener.port] must be an integer"),
        ("[listener]\nport = 70000\n", "[listener.port] must be 0-65535"),
        ('[[rule.codes]]\ncode = "14685 2"\n', "[rule.codes[1].code]"),
        ('[[rule.codes]]\ncode = "B12"\nsystem = ["L"]\n', "[rule.codes[1].system] is not a known setting"),
        ('[rule.units]\n"pmol/L" = 0\n', "[rule.units.pmol/L]"),
        ("[[rule.age_bands]]\nbelow_years = 30\nupper_limit_pmol_l = 800\n", "[rule.age_bands[1].below_years]"),
        ('[downstream]\nurl = "http://x"\n', "[downstream.url]"),
        ('[listener]\nallowed_peers = ["10.0.0.0/33"]\n', "[listener.allowed_peers]"),
        ("[nonsense]\n", "[nonsense] is not a known setting"),
        ("[rule\n", "not valid TOML"),
        ('[logging]\npatient_data = "yes"\n', "[logging.patient_data] must be true or false"),
        ('[rule]\ntext_da = "Ingen markør"\n', "[rule.text_da] must contain the comment_marker 'b12comment'"),
        ('[rule]\ncomment_marker = "ab"\n', "[rule.comment_marker] must be 4-40"),
        ('[rule]\ncomment_marker = "site marker"\n', "[rule.text_da] must contain the comment_marker"),
        ('[rule]\nrule_version = ""\n', "[rule.rule_version] must be 1-40"),
        ('[rule]\nrule_version = "b12 paed"\n', "[rule.rule_version]"),
        ('[rule]\nnte_entered_by = "a|b"\n', "[rule.nte_entered_by]"),
        ('[rule]\nearlier_texts = [""]\n', "[rule.earlier_texts] entry 1 must not be empty"),
        ('[rule]\nearlier_texts = "x"\n', "[rule.earlier_texts] must be a list"),
        ('[rule]\nignored_codes = ["a b"]\n', "[rule.ignored_codes] has an invalid entry"),
        ("[rule]\nnormal_texts = [1]\n", "[rule.normal_texts] must be a list of strings"),
        ('[rule]\nfinal_order_statuses = ["FF"]\n', "[rule.final_order_statuses] has an invalid entry"),
        ('[context]\nmode = "everything"\n', "[context.mode] must be message, requisition or patient"),
        ("[context]\nlookback_days = 0\n", "[context.lookback_days] must be greater than zero"),
        ('[context]\nstore = ""\n', "[context.store] must not be empty"),
        ("[context]\nhold_s = -1\n", "[context.hold_s] must be zero or more"),
        ('[context]\nmode = "message"\nhold_s = 900\n', "[context.hold_s] needs mode"),
        ("[context]\nkey_file = 3\n", "[context.key_file] must be a string"),
    ],
)
def test_bad_config_names_file_and_key(text, names):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.toml")
    assert str(info.value).startswith("site.toml: ")
    assert names in str(info.value)


def test_rule_keys_of_the_comment_are_read():
    cfg = parse_config(
        "[rule]\n"
        'rule_version = "site-3"\n'
        'comment_marker = "AUTO-B12"\n'
        'text_da = "Tekst (AUTO-B12 {rule_version})"\n'
        'text_en = "Text (AUTO-B12 {rule_version})"\n'
        'nte_entered_by = "B12COMMENT^Automatic rule"\n'
        'earlier_texts = ["Old text"]\n'
        'normal_texts = ["Lysegul"]\n'
        'ignored_codes = ["PRV"]\n'
        'final_order_statuses = ["F"]\n'
        "cancelled_order_statuses = []\n"
    )
    rule = cfg.rule
    assert rule.comment_text() == "Tekst (AUTO-B12 site-3)"
    assert rule.all_comment_texts() == ("Tekst (AUTO-B12 site-3)", "Text (AUTO-B12 site-3)", "Old text")
    assert (rule.nte_entered_by, rule.normal_texts, rule.ignored_codes) == (
        "B12COMMENT^Automatic rule",
        ("Lysegul",),
        ("PRV",),
    )
    assert (rule.final_order_statuses, rule.cancelled_order_statuses) == (("F",), ())


def test_cli_stops_on_bad_config_before_running(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[rule]\nunknown_key = 1\n")
    sample = REPO / "sample_messages" / "child_isolated_high_b12.hl7"
    proc = subprocess.run(
        [sys.executable, "-m", "b12comment", "preview", str(sample), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "bad.toml" in proc.stderr and "rule.unknown_key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_config_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "b12comment", "preview", "-", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        input="",
    )
    assert proc.returncode == 2
    assert "config file not found" in proc.stderr
