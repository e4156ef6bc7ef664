"""Cornerstones: the patient's age from real feeds' times (birth after
collection on the same day, time zones, collection times that disagree).

Every message is written out here byte for byte, and so is the comment an
expected output carries (the guideline's conclusion in English, rule
b12-paed-2), so the expected bytes do not come from the product.
"""

from __future__ import annotations

import pytest

from b12comment.core.chain import decide
from b12comment.core.rule_config import RuleConfig

RULE = RuleConfig(language="en")
NTE = (
    b"NTE|1|L|Isolated elevated vitamin B12 in children and adolescents under 18 has no clinical "
    b"significance: when B12 (however high) is the only abnormal biochemical finding, it needs no "
    b"concern and no further investigation, not even a repeat B12 measurement. "
    b"(Automatic comment, b12comment rule b12-paed-2)|RE\r"
)


def message(
    birth: str,
    obx14: str,
    obr7: str = "",
    msh7: str = "20261120090000",
    b12: str = "1350",
    rng: str = "250-900",
    flag: str = "H",
) -> bytes:
    return (
        f"MSH|^~\\&|LAB|HOSP|EHR|HOSP|{msh7}||ORU^R01|T1|P|2.5.1\r"
        f"PID|1||1234567890^^^CPR||Doe^Kim||{birth}|F\r"
        f"ORC|RE|REQ1|LAB1||CM\r"
        f"OBR|1|REQ1|LAB1|B12^B12 panel^L|||{obr7}|||||||||||||||||F\r"
        f"OBX|1|NM|NPU01700^P-Cobalamin^IUPP||{b12}|pmol/L|{rng}|{flag}|||F|||{obx14}\r"
    ).encode("ascii")


def commented(m: bytes) -> bytes:
    return m + NTE


def outcome(m: bytes, rule: RuleConfig = RULE):
    got = decide(None, 0, m, rule)
    return got.output, got.decision.reasons


# -- birth after collection on the same day


def test_birth_after_collection_on_the_same_day_is_age_unknown():
    m = message(birth="20261120100000", obx14="20261120083000")
    assert outcome(m) == (m, ("age_unknown",))


def test_birth_before_collection_on_the_same_day_is_a_newborn():
    m = message(birth="20261120080000", obx14="20261120083000")
    assert outcome(m) == (commented(m), ())


def test_a_birth_date_without_a_time_on_the_collection_day_is_a_newborn():
    m = message(birth="20261120", obx14="20261120083000")
    assert outcome(m) == (commented(m), ())


# -- time zones: an offset is taken in the sender's local time first


def test_a_utc_collection_time_is_read_in_the_senders_zone_from_msh7():
    # 23:30 UTC on the 19th is 00:30 on the 20th at +0100: the patient is 18 that day.
    m = message(birth="20081120", obx14="20261119233000+0000", msh7="20261120090000+0100")
    assert outcome(m) == (m, ("adult",))


def test_the_same_time_an_hour_earlier_is_still_the_day_before():
    m = message(birth="20081120", obx14="20261119223000+0000", msh7="20261120090000+0100")
    assert outcome(m) == (commented(m), ())


def test_a_site_zone_is_used_when_msh7_gives_no_offset():
    m = message(birth="20081120", obx14="20261119233000+0000", msh7="20261120090000")
    site = RuleConfig(language="en", timezone="Europe/Copenhagen")
    assert outcome(m, site) == (m, ("adult",))


def test_a_summer_time_offset_comes_from_the_site_zone():
    # Copenhagen is +0200 in July: 22:30 UTC on 19 July is 00:30 on the 20th.
    m = message(birth="20080720", obx14="20260719223000+0000", msh7="20260720090000")
    site = RuleConfig(language="en", timezone="Europe/Copenhagen")
    assert outcome(m, site) == (m, ("adult",))
    # no zone known: 22:30 UTC on the 19th is the 19th or the 20th somewhere, 17
    # or 18: not certainly under 18
    assert outcome(m) == (m, ("adult",))


def test_msh7s_offset_and_the_site_zone_both_count():
    # The sender stamps in UTC (the 19th, 17), the site is in Copenhagen (the
    # 20th, 18): the patient's calendar may be either: not certainly under 18.
    m = message(birth="20081120", obx14="20261119233000+0000", msh7="20261120090000+0000")
    site = RuleConfig(language="en", timezone="Europe/Copenhagen")
    assert outcome(m, site) == (m, ("adult",))
    # an hour earlier, the 19th in both: 17
    m = message(birth="20081120", obx14="20261119223000+0000", msh7="20261120090000+0000")
    assert outcome(m, site) == (commented(m), ())


def test_birth_dates_are_local_calendar_dates():
    m = message(birth="20081120", obx14="20261119233000", msh7="20261120090000+0100")
    assert outcome(m) == (commented(m), ())  # no offset on the collection: local already


# -- collection times that disagree across a limit


def test_collection_times_on_two_sides_of_18_are_age_unknown():
    m = message(birth="20081120", obx14="20261119083000", obr7="20261120083000")
    assert outcome(m) == (m, ("age_unknown",))


def test_collection_times_on_one_side_of_18_decide_as_before():
    m = message(birth="20081120", obx14="20261118083000", obr7="20261119083000")
    assert outcome(m) == (commented(m), ())


@pytest.mark.parametrize(
    "b12, expected",
    [
        ("1000", "age_unknown"),  # 11 (limit 1200: not elevated) or 12 (limit 800: elevated)
        ("1500", None),  # elevated under both bands' limits: the edge does not decide
    ],
)
def test_collection_times_across_the_age_band_edge_whose_limit_decides(b12, expected):
    m = message(birth="20141120", obx14="20261120083000", obr7="20261119083000", b12=b12, rng="", flag="")
    if expected is None:
        assert outcome(m) == (commented(m), ())
    else:
        assert outcome(m) == (m, (expected,))


def test_the_site_zone_is_configured_by_its_iana_name(tmp_path):
    from b12comment.config import load_config
    from b12comment.errors import UsageError

    good = tmp_path / "good.toml"
    good.write_text('[rule]\ntimezone = "Europe/Copenhagen"\n')
    assert load_config(good).rule.timezone == "Europe/Copenhagen"
    bad = tmp_path / "bad.toml"
    bad.write_text('[rule]\ntimezone = "Europe/Aarhus"\n')
    with pytest.raises(UsageError, match="timezone"):
        load_config(bad)
