"""Unit tests of b12comment.values (quantities, ranges) and b12comment.dates
(HL7 timestamps of any precision, age in completed years).

Facts cited are from ../shared/clinical-facts.md ("Units and values", "Age").
"""

from __future__ import annotations

from datetime import date

import pytest

from b12comment.core.dates import Age, DayRange, age_at, parse_ts
from b12comment.core.values import Quantity, Range, outside, parse_number, parse_quantity

# ---------------------------------------------------------------------------
# parse_quantity


@pytest.mark.parametrize(
    "vtype, comps, expected",
    [
        ("NM", ["1350"], Quantity(1350.0, "")),
        ("NM", [" 1350 "], Quantity(1350.0, "")),
        ("NM", ["1350.5"], Quantity(1350.5, "")),
        ("NM", ["+5"], Quantity(5.0, "")),
        ("NM", ["-5"], Quantity(-5.0, "")),
        ("NM", [".5"], Quantity(0.5, "")),
        ("NM", ["1350", ""], Quantity(1350.0, "")),  # trailing empty component
        ("SN", [">", "1476"], Quantity(1476.0, ">")),
        ("SN", ["", "1350"], Quantity(1350.0, "")),
        ("SN", ["=", "1350"], Quantity(1350.0, "")),
        ("SN", [">=", "1200"], Quantity(1200.0, ">=")),
        ("SN", ["=>", "1200"], Quantity(1200.0, ">=")),
        ("SN", ["<", "150"], Quantity(150.0, "<")),
        ("SN", ["<=", "150"], Quantity(150.0, "<=")),
        ("SN", ["", "1476,0"], Quantity(1476.0, "")),
        ("SN", [">", "1476", "", ""], Quantity(1476.0, ">")),
        ("ST", [">1476"], Quantity(1476.0, ">")),
        ("ST", ["> 1476"], Quantity(1476.0, ">")),
        ("ST", ["  >  1476  "], Quantity(1476.0, ">")),
        ("TX", [">1200"], Quantity(1200.0, ">")),
        ("ST", ["<150"], Quantity(150.0, "<")),
        ("ST", ["1476,0"], Quantity(1476.0, "")),  # Danish decimal comma
        ("ST", ["1476,5"], Quantity(1476.5, "")),
        ("ST", ["1234,567"], Quantity(1234.567, "")),  # four digits before: not thousands
        ("ST", ["≥1200"], Quantity(1200.0, ">=")),
        ("ST", ["=1200"], Quantity(1200.0, "")),
    ],
)
def test_parse_quantity_reads(vtype, comps, expected):
    assert parse_quantity(vtype, comps) == expected


@pytest.mark.parametrize(
    "vtype, comps",
    [
        ("ST", ["1,476"]),  # 1.476 (Danish) or 1476 (English): ambiguous
        ("ST", ["12,345"]),
        ("NM", ["1,476"]),
        ("SN", ["", "1,476"]),
        ("ST", ["1 476"]),  # space as thousands separator
        ("ST", ["1.476.000"]),
        ("ST", ["1e3"]),
        ("ST", ["abc"]),
        ("ST", ["see note"]),
        ("ST", [""]),
        ("NM", []),
        ("ST", ["<>5"]),  # "not equal" is no quantity
        ("SN", ["<>", "5"]),
        ("SN", ["", "1", "-", "5"]),  # SN range
        ("SN", ["", "1", ":", "2"]),  # SN ratio
        ("SN", ["~", "5"]),
        ("SN", [">", ""]),
        ("NM", ["1350", "x"]),  # a second component: not a plain number
        ("ST", [">>1476"]),
        ("ST", ["1476 pmol/L"]),
    ],
)
def test_parse_quantity_refuses(vtype, comps):
    assert parse_quantity(vtype, comps) is None


def test_parse_number_ambiguous_and_plain():
    assert parse_number("1,476") is None
    assert parse_number("1,47") == pytest.approx(1.47)
    assert parse_number("1,4765") == pytest.approx(1.4765)
    assert parse_number("  42 ") == 42.0
    assert parse_number("") is None


# ---------------------------------------------------------------------------
# Quantity.above / below and outside


@pytest.mark.parametrize(
    "q, limit, expected",
    [
        (Quantity(1477.0), 1476.0, True),
        (Quantity(1476.0), 1476.0, False),  # equal is not above
        (Quantity(1475.0), 1476.0, False),
        (Quantity(1476.0, ">"), 1476.0, True),  # >X elevated when X at or above the limit
        (Quantity(1476.0, ">"), 1200.0, True),
        (Quantity(1199.0, ">"), 1200.0, False),  # >1199 could be 1199.5
        (Quantity(1200.0, ">="), 1200.0, False),  # could be exactly 1200
        (Quantity(1201.0, ">="), 1200.0, True),
        (Quantity(2000.0, "<"), 10.0, False),  # a censored < value is never elevated
        (Quantity(2000.0, "<="), 10.0, False),
    ],
)
def test_quantity_above(q, limit, expected):
    assert q.above(limit) is expected


def test_quantity_scaled_keeps_comparator():
    q = Quantity(2000.0, ">").scaled(0.7378)
    assert q.comparator == ">" and q.number == pytest.approx(1475.6)


@pytest.mark.parametrize(
    "q, rng, expected",
    [
        (Quantity(700.0), Range(200.0, 600.0), True),
        (Quantity(600.0), Range(200.0, 600.0), False),
        (Quantity(200.0), Range(200.0, 600.0), False),
        (Quantity(199.0), Range(200.0, 600.0), True),
        (Quantity(5.0), Range(None, 600.0), False),
        (Quantity(700.0), Range(None, 600.0), True),
        (Quantity(1.0), Range(5.0, None), True),
        (Quantity(100.0, ">"), Range(200.0, 600.0), False),  # could be inside
        (Quantity(600.0, ">"), Range(200.0, 600.0), True),
        (Quantity(200.0, "<"), Range(200.0, 600.0), True),
        (Quantity(250.0, "<"), Range(200.0, 600.0), False),  # could be inside
        (Quantity(200.0, "<="), Range(200.0, 600.0), False),  # could be exactly 200
        (Quantity(199.0, "<="), Range(200.0, 600.0), True),
        (Quantity(1000.0, "<"), Range(200.0, 600.0), False),
    ],
)
def test_outside(q, rng, expected):
    assert outside(q, rng) is expected


# ---------------------------------------------------------------------------
# parse_ts


def d(text: str) -> date:
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


@pytest.mark.parametrize(
    "text, first, last",
    [
        ("2016", "20160101", "20161231"),
        ("201602", "20160201", "20160229"),  # leap February
        ("201502", "20150201", "20150228"),
        ("201603", "20160301", "20160331"),
        ("20160315", "20160315", "20160315"),
        ("2016031504", "20160315", "20160315"),
        ("201603150412", "20160315", "20160315"),
        ("20160315041230", "20160315", "20160315"),
        ("20160315041230.1234", "20160315", "20160315"),
        ("201603150412+0100", "20160315", "20160315"),
        ("20160315235959-1200", "20160315", "20160315"),  # time zone ignored: same calendar day
        ("20160315000000+1400", "20160315", "20160315"),
        ("2016+0100", "20160101", "20161231"),
        (" 20160315 ", "20160315", "20160315"),
        ("20080229", "20080229", "20080229"),
    ],
)
def test_parse_ts_reads(text, first, last):
    assert parse_ts(text) == DayRange(d(first), d(last))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "16",
        "201",
        "20161",
        "2016031",
        "20161315",
        "20160230",
        "20150229",
        "20160001",
        "201603152500",
        "201603151260",
        "20160315126061",
        "20160315041",
        "2016-03-15",
        "15.03.2016",
        "abcd",
        "1799",
        "20160315+01",
        "20160315T0412",
    ],
)
def test_parse_ts_refuses(text):
    assert parse_ts(text) is None


# ---------------------------------------------------------------------------
# age_at


def age(birth: str, collected: str) -> Age | None:
    b, c = parse_ts(birth), parse_ts(collected)
    assert b is not None and c is not None
    return age_at(b, c)


@pytest.mark.parametrize(
    "birth, collected, expected",
    [
        ("20060111", "20240110", Age(17, 17)),  # 17 years 364 days
        ("20060110", "20240110", Age(18, 18)),  # 18th birthday
        ("20231201", "20240110", Age(0, 0)),  # infant
        ("20240110", "20240110", Age(0, 0)),  # born on the day of sampling
        ("20230110", "20240110", Age(1, 1)),
        ("20230111", "20240110", Age(0, 0)),
        ("20120110", "20240110", Age(12, 12)),
        # leap-day birth
        ("20080229", "20240228", Age(15, 15)),
        ("20080229", "20240229", Age(16, 16)),
        ("20080229", "20260227", Age(17, 17)),
        ("20080229", "20260301", Age(18, 18)),
        # In a non-leap year, 28 February counts as the birthday: the earlier of the
        # two possible days, so a child is never called under 18 a day too long.
        ("20080229", "20260228", Age(18, 18)),
        # partial birth dates: every date they could stand for
        ("2016", "20240110", Age(7, 8)),
        ("2006", "20240110", Age(17, 18)),
        ("200601", "20240110", Age(17, 18)),
        ("200602", "20240110", Age(17, 17)),
        ("2007", "20240110", Age(16, 17)),
        ("2024", "20240110", Age(0, 0)),  # born this year: at most 9 days old
        # partial collection time
        ("20060601", "2024", Age(17, 18)),
        ("20060601", "202401", Age(17, 17)),
        # time zones do not move the calendar day
        ("20060110230000-1200", "20240110003000+1400", Age(18, 18)),
        ("20060111000000+1400", "20240110235959-1200", Age(17, 17)),
    ],
)
def test_age_at(birth, collected, expected):
    assert age(birth, collected) == expected


@pytest.mark.parametrize(
    "birth, collected",
    [
        ("20240111", "20240110"),
        ("2025", "20240110"),
        ("202402", "20240110"),
    ],
)
def test_age_at_birth_after_collection_is_unknown(birth, collected):
    assert age(birth, collected) is None


def test_age_never_negative_and_ordered():
    for birth in ("2024", "202401", "20240101", "2023", "2006", "200601"):
        a = age(birth, "20240110")
        assert a is not None and 0 <= a.youngest <= a.oldest


def test_completed_years_counts_as_relativedelta_does():
    """completed_years() is plain arithmetic on the hot path; dateutil's
    relativedelta is the reference, over every birth day of four years
    (29 February 2008 among them) against collection days around each birthday."""
    from datetime import date, timedelta

    from dateutil.relativedelta import relativedelta

    from b12comment.core.dates import completed_years

    checked = 0
    birth = date(2007, 1, 1)
    while birth < date(2011, 1, 1):
        for years in (0, 1, 3, 17, 18):
            around = date(birth.year + years, birth.month, 28 if birth.day > 28 else birth.day)
            for shift in (-2, -1, 0, 1, 2, 3):
                on = around + timedelta(days=shift)
                if on >= birth:
                    assert completed_years(birth, on) == relativedelta(on, birth).years, (birth, on)
                    checked += 1
        birth += timedelta(days=1)
    assert checked > 40_000
