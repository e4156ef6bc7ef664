"""HL7 dates of any precision, as the interval of days they could stand for,
and age in completed years between two such intervals."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date

_TS = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,4})?)?)?)?)?)?"
    r"(?:[+-]\d{4})?$"
)


@dataclass(frozen=True)
class DayRange:
    first: date
    last: date


def parse_ts(text: str) -> DayRange | None:
    """`2016` -> all of 2016; `201603` -> March 2016; `20160315...` -> that day.

    Time and time zone are read for validity but ignored: age is a matter of
    calendar days. Anything not a valid HL7 DTM gives None.
    """
    m = _TS.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second = m.groups()
    y = int(year)
    if y < 1800:
        return None
    try:
        if hour is not None and (int(hour) > 23 or int(minute or 0) > 59 or int(second or 0) > 59):
            return None
        if month is None:
            return DayRange(date(y, 1, 1), date(y, 12, 31))
        mo = int(month)
        if day is None:
            return DayRange(date(y, mo, 1), date(y, mo, calendar.monthrange(y, mo)[1]))
        d = date(y, mo, int(day))
        return DayRange(d, d)
    except ValueError:
        return None


def completed_years(birth: date, on: date) -> int:
    """Completed years from `birth` to `on` (not before it), as dateutil's
    relativedelta(on, birth).years counts them: a birthday on 29 February
    falls on 28 February in a common year (a test holds the two equal)."""
    years = on.year - birth.year
    birthday = min(birth.day, calendar.monthrange(on.year, birth.month)[1])
    if (on.month, on.day) < (birth.month, birthday):
        years -= 1
    return years


@dataclass(frozen=True)
class Age:
    youngest: int  # completed years, youngest the patient could be
    oldest: int  # completed years, oldest the patient could be


def age_at(birth: DayRange, collected: DayRange) -> Age | None:
    """Age at collection over every date the two could stand for.

    None when the birth is certainly after the collection.
    """
    if birth.first > collected.last:
        return None
    oldest = completed_years(birth.first, collected.last)
    latest_birth = min(birth.last, collected.first)
    youngest = completed_years(latest_birth, collected.first) if latest_birth <= collected.first else 0
    return Age(max(youngest, 0), oldest)
