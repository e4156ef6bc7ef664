"""HL7 dates of any precision, as the interval of days they could stand for,
and age in completed years between two such intervals."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

_TS = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,4})?)?)?)?)?)?"
    r"([+-]\d{4})?$"
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
    year, month, day, hour, minute, second, _offset = m.groups()
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


@dataclass(frozen=True)
class Moment:
    """A time stamp in the sender's local time: its days, and its wall-clock
    time when it gives at least the hour."""

    days: DayRange
    at: datetime | None = None  # local, naive


def offset_zone(text: str) -> tzinfo | None:
    """The fixed zone of a time stamp's offset (`...+0100`), or None."""
    m = _TS.match(text.strip())
    if not m or m.group(7) is None:
        return None
    sign, hh, mm = m.group(7)[0], int(m.group(7)[1:3]), int(m.group(7)[3:5])
    if hh > 23 or mm > 59:
        return None
    delta = timedelta(hours=hh, minutes=mm)
    return timezone(-delta if sign == "-" else delta)


@lru_cache(maxsize=8)
def site_zone(name: str) -> tzinfo | None:
    """The IANA zone `name` (`Europe/Copenhagen`); None for "" (none configured)."""
    return ZoneInfo(name) if name else None


def parse_moment(text: str, local: tzinfo | None = None) -> Moment | None:
    """A time stamp as `parse_ts` reads it, with its wall-clock time. One
    that carries an offset and the hour is first taken into `local` (the
    sender's zone), so that its date is the sender's calendar date; without
    `local`, or without an offset, it is taken as written."""
    days = parse_ts(text)
    if days is None:
        return None
    m = _TS.match(text.strip())
    assert m is not None  # parse_ts read it
    year, month, day, hour, minute, second, offset = m.groups()
    if hour is None:
        return Moment(days)
    at = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0))
    own = offset_zone(text) if offset is not None else None
    if own is not None and local is not None:
        at = at.replace(tzinfo=own).astimezone(local).replace(tzinfo=None)
        days = DayRange(at.date(), at.date())
    return Moment(days, at)


def age_at_moment(birth: Moment, collected: Moment) -> Age | None:
    """Age at collection (`age_at`); None also when both fall on one day and
    their times put the birth after the collection."""
    if (
        birth.at is not None
        and collected.at is not None
        and birth.days == collected.days
        and birth.days.first == birth.days.last
        and birth.at > collected.at
    ):
        return None
    return age_at(birth.days, collected.days)
