"""Dates as people say them ("tomorrow", "by Friday", "next Monday", "on 3 March", "in two
weeks"), relative to the user's own day. Every pattern is anchored on a word and has no nested
repetition, so a message is scanned in linear time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_ABBREVIATIONS = {"mon": 0, "tue": 1, "tues": 1, "wed": 2, "thu": 3, "thur": 3,
                          "thurs": 3, "fri": 4, "sat": 5, "sun": 6}  # fmt: skip
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")  # fmt: skip
_MONTH_NUMBER = {name: n for n, name in enumerate(MONTHS, 1)}
_MONTH_NUMBER.update({name[:3]: n for n, name in enumerate(MONTHS, 1)})
_MONTH_NUMBER["sept"] = 9
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                 "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "couple of": 2,
                 "few": 3}  # fmt: skip

_DAY = (
    r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday"
    r"|mon|tues?|weds?|thur?s?|fri)"
)
_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
          r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")  # fmt: skip
_PART = r"(?:\s+(?:morning|afternoon|evening|night|lunchtime|first thing))?"
_ORDINAL = r"(\d{1,2})(?:st|nd|rd|th)?"
_LEAD = (
    r"(?:first thing\s+)?(?:(?:due|by|on|for|until|till|before|from)\s+)?"
    r"(?:(?:the|this|coming)\s+)?"
)
_COUNT = r"(\d{1,3}|a|an|one|two|three|four|five|six|seven|eight|nine|ten|couple of|few)"

# One alternation, tried at word starts only: which group matched says which form it is.
DATE = re.compile(
    r"\b" + _LEAD + r"(?:"
    r"(?P<today>today|tonight|this evening|this afternoon|this morning|end of (?:the )?day)"
    r"|(?P<overmorrow>(?:the )?day after tomorrow)"
    r"|(?P<tomorrow>(?:tomorrow|tmrw|tmr|tomorow)" + _PART + ")"
    r"|(?P<iso>(\d{4})-(\d{2})-(\d{2}))"
    r"|(?P<dm>" + _ORDINAL + r"(?:\s+of)?\s+(" + _MONTH + r"))"
    r"|(?P<md>(" + _MONTH + r")\s+" + _ORDINAL + r")"
    r"|(?P<next_day>next\s+(" + _DAY + r")" + _PART + ")"
    r"|(?P<day>(" + _DAY + r")" + _PART + ")"
    r"|(?P<within>in\s+" + _COUNT + r"\s+(days?|weeks?|months?))"
    r"|(?P<next_week>next\s+week)"
    r"|(?P<end_week>(?:the\s+)?(?:end of (?:the |this )?week|weekend))"
    r"|(?P<end_month>end of (?:the |this )?month)"
    r")\b",
    re.I,
)


@dataclass(frozen=True)
class Found:
    """A date named in a message: where (to cut it from a title), and the day, or why not."""

    start: int
    end: int
    day: date | None
    problem: str | None = None


def today_in(zone: str) -> date:
    try:
        return datetime.now(ZoneInfo(zone)).date()
    except (ValueError, OSError):  # validated at the edge; an unknown zone here means UTC
        return datetime.now(ZoneInfo("UTC")).date()


def find_date(text: str, today: date) -> Found | None:
    """The first date the text names, resolved against `today` (the user's day)."""
    match = DATE.search(text)
    if match is None:
        return None
    kind = match.lastgroup
    try:
        day = _resolve(kind or "", match, today)
    except _NoSuchDay as problem:
        return Found(match.start(), match.end(), None, str(problem))
    return Found(match.start(), match.end(), day)


class _NoSuchDay(ValueError):
    """A date that does not exist ("31 February"): the agent asks instead of guessing."""


def _resolve(kind: str, match: re.Match[str], today: date) -> date:
    groups = match.groups()
    index = DATE.groupindex[kind]
    if kind == "today":
        return today
    if kind == "tomorrow":
        return today + timedelta(days=1)
    if kind == "overmorrow":
        return today + timedelta(days=2)
    if kind == "iso":
        year, month, day = (int(g) for g in groups[index : index + 3])
        return _day(year, month, day, f"{match[kind]}")
    if kind == "dm":
        return _next_date(today, _month(groups[index + 1]), int(groups[index]))
    if kind == "md":
        return _next_date(today, _month(groups[index]), int(groups[index + 1]))
    if kind == "next_day":
        # "next Monday": the Monday of next week (Monday to Sunday weeks).
        monday = today - timedelta(days=today.weekday()) + timedelta(days=7)
        return monday + timedelta(days=_weekday(groups[index]))
    if kind == "day":
        # "Friday", "by Friday", "this Friday": the first one after today.
        ahead = (_weekday(groups[index]) - today.weekday() - 1) % 7 + 1
        return today + timedelta(days=ahead)
    if kind == "within":
        count_text, unit = groups[index].lower(), groups[index + 1].lower()
        count = int(count_text) if count_text.isdigit() else _NUMBER_WORDS[count_text]
        if unit.startswith("day"):
            return today + timedelta(days=count)
        if unit.startswith("week"):
            return today + timedelta(weeks=count)
        month = today.month - 1 + count
        year, month = today.year + month // 12, month % 12 + 1
        return _clamped(year, month, today.day)
    if kind == "next_week":
        return today - timedelta(days=today.weekday()) + timedelta(days=7)
    if kind == "end_week":
        return today + timedelta(days=6 - today.weekday())
    if kind == "end_month":
        following = date(today.year + today.month // 12, today.month % 12 + 1, 1)
        return following - timedelta(days=1)
    raise _NoSuchDay("I couldn't read that date.")


def end_of_week(today: date) -> date:
    return today + timedelta(days=6 - today.weekday())


def _weekday(name: str) -> int:
    lowered = name.lower()
    for n, day in enumerate(WEEKDAYS):
        if lowered == day:
            return n
    return _WEEKDAY_ABBREVIATIONS.get(lowered[:5], _WEEKDAY_ABBREVIATIONS.get(lowered[:3], 0))


def _month(name: str) -> int:
    lowered = name.lower()
    return _MONTH_NUMBER.get(lowered, _MONTH_NUMBER.get(lowered[:3], 1))


def _next_date(today: date, month: int, day: int) -> date:
    """The next such day from today on (this year's, or next year's once it has passed)."""
    name = f"{day} {MONTHS[month - 1].capitalize()}"
    if day == 29 and month == 2:  # the next 29 February there is
        for year in range(today.year, today.year + 8):
            if _valid(year, 2, 29) and date(year, 2, 29) >= today:
                return date(year, 2, 29)
    found = _day(today.year, month, day, name)
    return found if found >= today else _day(today.year + 1, month, day, name)


def _valid(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def _day(year: int, month: int, day: int, name: str) -> date:
    try:
        return date(year, month, day)
    except ValueError:
        if 1 <= month <= 12 and day >= 1:
            raise _NoSuchDay(
                f"{MONTHS[month - 1].capitalize()} has no {_ordinal(day)}"
                if day <= 31 else f"“{name}” is not a day of the calendar"
            ) from None  # fmt: skip
        raise _NoSuchDay(f"“{name}” is not a date I know") from None


def _clamped(year: int, month: int, day: int) -> date:
    while day > 28 and not _valid(year, month, day):
        day -= 1
    return date(year, month, day)


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"
