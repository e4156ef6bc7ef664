"""HL7 dates of any precision, as the interval of days they could stand for,
and age in completed years between two such intervals."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
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
    year, month, day, hour, minute, second, offset = m.groups()
    y = int(year)
    if y < 1800 or (offset is not None and not _valid_offset(offset)):
        return None  # an offset that is none (`+2500`): the time's zone, so its date, is unknown
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
    time when it gives at least the hour, as the earliest and latest it could
    be (the same unless the sender's zone is in doubt)."""

    days: DayRange
    at: datetime | None = None  # local, naive: the earliest it could be
    until: datetime | None = None  # local, naive: the latest (None: `at`)

    @property
    def latest(self) -> datetime | None:
        return self.until if self.until is not None else self.at


def _valid_offset(offset: str) -> bool:
    """`+HHMM`/`-HHMM` of a zone in use: UTC-12 to UTC+14."""
    hh, mm = int(offset[1:3]), int(offset[3:5])
    return hh <= (14 if offset[0] == "+" else 12) and mm <= 59


def offset_zone(text: str) -> tzinfo | None:
    """The fixed zone of a time stamp's offset (`...+0100`), or None."""
    m = _TS.match(text.strip())
    if not m or m.group(7) is None or not _valid_offset(m.group(7)):
        return None
    sign, hh, mm = m.group(7)[0], int(m.group(7)[1:3]), int(m.group(7)[3:5])
    delta = timedelta(hours=hh, minutes=mm)
    return timezone(-delta if sign == "-" else delta)


# Every zone in use lies between UTC-12 and UTC+14: where the sender's zone
# is not known, a moment's local date is any date it has in one of them.
_EARLIEST_ZONE, _LATEST_ZONE = timedelta(hours=-12), timedelta(hours=14)


@lru_cache(maxsize=8)
def site_zone(name: str) -> tzinfo | None:
    """The IANA zone `name` (`Europe/Copenhagen`); None for "" (none configured)."""
    return ZoneInfo(name) if name else None


def parse_moment(text: str, zones: tuple[tzinfo, ...] = (), written: bool = False) -> Moment | None:
    """A time stamp as `parse_ts` reads it, with its wall-clock time. One
    that carries an offset and the hour is a moment: its date is the sender's
    calendar date, taken in each of `zones` (the zones the sender's local
    time could be in), or in every zone in use when none is known; `written`
    adds the date as written (a birth date is a local calendar date, but
    whose?). Its days then span every such date. Without an offset it is
    taken as written (local already)."""
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
    if own is None:
        return Moment(days, at)
    instant = at.replace(tzinfo=own)
    if zones:
        local = [instant.astimezone(z).replace(tzinfo=None) for z in zones]
    else:
        utc = instant.astimezone(UTC).replace(tzinfo=None)
        local = [utc + _EARLIEST_ZONE, utc + _LATEST_ZONE]
    if written:
        local.append(at)
    first, last = min(local), max(local)
    return Moment(DayRange(first.date(), last.date()), first, last)


def age_at_moment(birth: Moment, collected: Moment) -> Age | None:
    """Age at collection (`age_at`); None also when both give a time and the
    birth could be after the collection (their times say so on the same day,
    or a zone in doubt leaves it open)."""
    latest_birth = birth.latest
    if latest_birth is not None and collected.at is not None and latest_birth > collected.at:
        return None
    return age_at(birth.days, collected.days)
