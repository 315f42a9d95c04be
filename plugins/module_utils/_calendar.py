# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Market calendar: freeze windows (funding, expiry, settlement and their averaging windows) a rollout must avoid.

A schedule is a YAML file ``{windows: [...]}``; each window has a ``name``, its instants and a margin ``before`` and
``after`` them. Daily windows (``recurring: daily``) give times of day in UTC in ``at``, one-off windows give full
ISO 8601 date-times with a zone in ``at``, and recurring windows beyond daily (weekly, monthly expiries) give an
RFC 5545 rule in ``rrule`` (read by ``dateutil.rrule.rrulestr``, always in UTC, strictly validated, and expanded only
over the interval asked about). A rollout ``[start, start + duration]`` may touch a window's edge but not overlap it;
a window with no margin still freezes its instant.

Problems in a schedule raise :class:`ScheduleError` naming the file, the window and the fix; bad options raise
:class:`CalendarError`. Nothing here reads the clock: callers pass ``now``.
"""

from __future__ import annotations

import datetime as dt
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

try:
    import yaml
except ImportError:
    HAS_YAML = False
    YAML_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_YAML = True
    YAML_IMPORT_ERROR = None

try:
    from dateutil.relativedelta import relativedelta
    from dateutil.rrule import rrule as _RRule
    from dateutil.rrule import rrulestr
except ImportError:
    HAS_DATEUTIL = False
    DATEUTIL_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_DATEUTIL = True
    DATEUTIL_IMPORT_ERROR = None

RECURRENCES = ("daily",)
SEARCH_HORIZON = dt.timedelta(days=7)
_WINDOW_KEYS = ("name", "recurring", "at", "rrule", "before", "after")
# RFC 5545 rules: what a freeze window may use, and the bounds that keep every expansion finite
RULE_FREQS = ("YEARLY", "MONTHLY", "WEEKLY", "DAILY")
RULE_KEYS = ("FREQ", "INTERVAL", "UNTIL", "BYMONTH", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYDAY", "BYHOUR",
             "BYMINUTE", "BYSECOND", "BYSETPOS", "WKST")
RULE_MAX_INTERVAL = 12
RULE_ANCHOR = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # counts from here without DTSTART: times default to 00:00:00
# a rule is probed for an instant from here: the iteration then ends by itself at year 9999
_RULE_PROBE = dt.datetime(9960, 1, 1, tzinfo=dt.UTC)
_DTSTART_RE = re.compile(r"DTSTART:(\d{8}T\d{6})Z\Z", re.ASCII)
_RULE_EXAMPLE = "FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=8;BYMINUTE=0 (the last Friday of the month at 08:00 UTC)"
_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\Z", re.ASCII)
_CLOCK_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?\Z", re.ASCII)
_SAMPLE = "testbed/freeze-windows.yml"


class CalendarError(ValueError):
    """A bad option (start, duration, emergency override); ``str()`` names it and the fix."""


class MissingLibraryError(RuntimeError):
    """A library the schedule needs is not installed (``library`` is its pip name)."""

    def __init__(self, library: str, error: str | None) -> None:
        self.library = library
        self.error = error
        super().__init__(f"the Python library {library!r} is required; install it with 'pip install {library}'")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.library, self.error))


class ScheduleError(ValueError):
    """An unusable schedule; ``str()`` is ``"<path>: <where>: <message>; <fix>"``."""

    def __init__(self, path: str, where: str | None, message: str, fix: str) -> None:
        self.path = path
        self.where = where
        self.message = message
        self.fix = fix
        super().__init__(f"{path}: {where}: {message}; {fix}" if where else f"{path}: {message}; {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.path, self.where, self.message, self.fix))


@dataclass(frozen=True)
class Rule:
    """An RFC 5545 recurrence in UTC, validated by :func:`parse_rule`; ``instants`` expands it over a bounded range."""

    text: str
    freq: str
    interval: int
    dtstart: dt.datetime
    rule: Any  # dateutil.rrule.rrule

    def instants(self, low: dt.datetime, high: dt.datetime) -> list[dt.datetime]:
        """Every instant in ``[low, high]``; the expansion starts one period before ``low``, never at DTSTART."""
        anchor = _shift_anchor(self.freq, self.interval, self.dtstart, low)
        return list(self.rule.replace(dtstart=anchor).between(low, high, inc=True))


@dataclass(frozen=True)
class Window:
    """One freeze window: daily ``times`` (seconds after midnight UTC), one-off ``moments`` or an RFC 5545 ``rule``."""

    name: str
    recurring: str | None
    times: tuple[int, ...]
    moments: tuple[dt.datetime, ...]
    before: dt.timedelta
    after: dt.timedelta
    rule: Rule | None = None


@dataclass(frozen=True)
class Occurrence:
    """One frozen interval ``[start, end]`` around the instant ``at`` of window ``name``."""

    name: str
    at: dt.datetime
    start: dt.datetime
    end: dt.datetime

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "at": format_time(self.at), "start": format_time(self.start),
                "end": format_time(self.end)}


@dataclass(frozen=True)
class Decision:
    """A rollout interval checked against a schedule."""

    start: dt.datetime
    end: dt.datetime
    overlaps: tuple[Occurrence, ...]
    next_start: dt.datetime | None

    @property
    def allowed(self) -> bool:
        return not self.overlaps

    def rollout(self) -> dict[str, Any]:
        seconds = int((self.end - self.start).total_seconds())
        return {"start": format_time(self.start), "end": format_time(self.end), "duration": seconds,
                "estimated": format_duration(seconds)}


# --- times and durations ---------------------------------------------------------------------------------------


def format_time(moment: dt.datetime) -> str:
    """``2026-11-24T10:15:00Z``."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"


def format_duration(seconds: int) -> str:
    """``42 min``, ``1 h 30 min``, ``90 s`` -> ``1 min 30 s``: how a person says an estimate."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s" if secs else ""]
    return " ".join(p for p in parts if p) or "0 s"


def parse_duration(value: Any) -> dt.timedelta:
    """``90s``, ``15m``, ``2h``, ``1h30m`` (and ``1d``); ``0`` is no margin. ValueError saying what is wrong."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int):
        if value == 0:
            return dt.timedelta(0)
        if value < 0:
            raise ValueError(f"{value} is negative")
        raise ValueError(f"{value} has no unit (seconds? minutes?)")
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"{value!r} is negative")
    match = _DURATION_RE.match(text)
    if not text or not match:
        raise ValueError(f"{value!r} is not a duration like 90s, 15m, 2h or 1h30m")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_start(value: str | None, now: dt.datetime) -> dt.datetime:
    """The rollout start as aware UTC (``now`` when empty; a time without zone is UTC); CalendarError otherwise."""
    if value is None or not str(value).strip():
        return now.astimezone(dt.UTC).replace(microsecond=0)
    text = str(value).strip()
    try:
        moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise CalendarError(
            f"start: {value!r} is not an ISO 8601 date-time; write it like 2026-11-24T10:00:00Z, or leave it out "
            "to start now"
        ) from None
    moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    return moment


# --- the schedule file -----------------------------------------------------------------------------------------


def load_schedule(path: str) -> list[Window]:
    """Read and validate a schedule file; ScheduleError naming the file, the window and the fix."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ScheduleError(path, None, "schedule file not found",
                            f"check the path, or write one like {_SAMPLE}") from None
    except IsADirectoryError:
        raise ScheduleError(path, None, "is a folder, not a schedule file",
                            "point schedule at the YAML file of freeze windows") from None
    except UnicodeDecodeError:
        raise ScheduleError(path, None, "not UTF-8 text", "save the schedule as UTF-8 YAML") from None
    except OSError as e:
        raise ScheduleError(path, None, f"cannot read the file ({e.strerror or e})",
                            "check the file's permissions") from None
    if not HAS_YAML:
        raise RuntimeError(
            "the Python library 'PyYAML' is required to read the freeze window schedule; install it with "
            f"'pip install PyYAML'. Import error: {YAML_IMPORT_ERROR}"
        )
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ScheduleError(path, where, f"not valid YAML: {problem}",
                            "fix the YAML syntax (yamllint shows the exact spot)") from None
    return parse_schedule(doc, path)


def parse_schedule(doc: Any, path: str) -> list[Window]:
    """Validate a decoded schedule document (``path`` only names it in errors)."""
    if not isinstance(doc, dict):
        found = "an empty file" if doc is None else f"a {type(doc).__name__}"
        raise ScheduleError(path, None, f"must be a mapping with a 'windows' list, found {found}",
                            f"write 'windows:' followed by a list of windows (see {_SAMPLE}), or 'windows: []'")
    unknown = sorted(str(k) for k in doc if k != "windows")
    if unknown:
        raise ScheduleError(path, None, f"unknown top-level key {', '.join(map(repr, unknown))}",
                            "the only top-level key is 'windows'; check the spelling and indentation")
    entries = doc.get("windows")
    if not isinstance(entries, list):
        raise ScheduleError(path, "windows", f"must be a list of windows, found {entries!r}",
                            "write one '- name: ...' entry per window, or 'windows: []' for none")
    windows: list[Window] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        window = _parse_window(path, index, entry)
        if window.name in names:
            raise ScheduleError(path, f"windows[{index}] {window.name!r}", "a second window has this name",
                                "give every window its own name; they identify it in refusals and audit records")
        names.add(window.name)
        windows.append(window)
    return windows


def _parse_window(path: str, index: int, entry: Any) -> Window:
    where = f"windows[{index}]"
    if not isinstance(entry, dict):
        raise ScheduleError(path, where, f"must be a mapping, found {entry!r}",
                            "write it like '- name: perpetual funding' with 'at', and optionally 'recurring', "
                            "'before' and 'after'")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ScheduleError(path, where, f"'name' is missing or empty (found {name!r})",
                            "give the window a name such as 'perpetual funding'")
    name = name.strip()
    where = f"window {name!r}"
    unknown = sorted(str(k) for k in entry if k not in _WINDOW_KEYS)
    if unknown:
        raise ScheduleError(path, where, f"unknown key {', '.join(map(repr, unknown))}",
                            "the keys of a window are " + ", ".join(_WINDOW_KEYS))
    if "rrule" in entry:
        return _parse_rule_window(path, where, name, entry)
    recurring = entry.get("recurring")
    if recurring is not None and recurring not in RECURRENCES:
        raise ScheduleError(path, where, f"recurring is {recurring!r}, which is not supported",
                            "use 'recurring: daily', an RFC 5545 rule in 'rrule' (e.g. "
                            f"rrule: {_RULE_EXAMPLE.split(' ', 1)[0]}), or list one-off windows with full date-times "
                            "in 'at'")
    margins = _margins(path, where, entry)
    if "at" not in entry or entry["at"] in (None, "", []):
        raise ScheduleError(path, where, "'at' is missing",
                            'give the times of day ("00:00") with recurring: daily, or a date-time '
                            '("2026-12-25T08:00:00Z") for a one-off window')
    values = entry["at"] if isinstance(entry["at"], list) else [entry["at"]]
    if recurring:
        times = tuple(sorted({_clock(path, where, v) for v in values}))
        return Window(name, recurring, times, (), margins["before"], margins["after"])
    moments = tuple(sorted({_moment(path, where, v) for v in values}))
    return Window(name, None, (), moments, margins["before"], margins["after"])


def _margins(path: str, where: str, entry: dict[str, Any]) -> dict[str, dt.timedelta]:
    margins = {}
    for key in ("before", "after"):
        try:
            margins[key] = parse_duration(entry.get(key, 0))
        except ValueError as e:
            raise ScheduleError(path, where, f"{key}: {e}",
                                f"write a duration that is zero or more, like {key}: 15m (90s, 2h and 1h30m work "
                                "too)") from None
    return margins


def _parse_rule_window(path: str, where: str, name: str, entry: dict[str, Any]) -> Window:
    if "at" in entry or "recurring" in entry:
        raise ScheduleError(path, where, "has 'rrule' together with 'at' or 'recurring'",
                            "a window is either an RFC 5545 'rrule', or 'at' times (with 'recurring: daily' for "
                            "daily ones); split it into two windows")
    margins = _margins(path, where, entry)
    try:
        rule = parse_rule(entry["rrule"])
    except ValueError as e:
        raise ScheduleError(path, where, f"rrule: {e}", f"write a rule like rrule: {_RULE_EXAMPLE}") from None
    return Window(name, "rrule", (), (), margins["before"], margins["after"], rule)


def parse_rule(value: Any) -> Rule:
    """Validate an RFC 5545 rule for a freeze window; ValueError saying what is wrong and what to write instead.

    Strict on purpose: UTC only (``DTSTART:20260102T080000Z``, no TZID), one RRULE (no EXDATE, RDATE, EXRULE),
    FREQ from DAILY to YEARLY, INTERVAL up to 12 (and then a DTSTART to count from), no COUNT (use UNTIL), the day
    given explicitly (BYDAY for WEEKLY; BYDAY or BYMONTHDAY for MONTHLY; BYMONTH with BYDAY or BYMONTHDAY, BYYEARDAY
    or BYWEEKNO for YEARLY), and a rule that happens at all (probed in a bounded range).
    """
    if not HAS_DATEUTIL:
        raise MissingLibraryError("python-dateutil", DATEUTIL_IMPORT_ERROR)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not an RFC 5545 rule")
    dtstart: dt.datetime | None = None
    body: str | None = None
    for line in (ln.strip() for ln in value.strip().splitlines()):
        if not line:
            continue
        upper = line.upper()
        if upper.startswith("DTSTART"):
            match = _DTSTART_RE.match(upper)
            if not match or dtstart is not None:
                raise ValueError(f"{line!r} is not one UTC start; write DTSTART:20260102T080000Z (the calendar is "
                                 "UTC and DST-free: no TZID, no local time)")
            try:
                dtstart = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
            except ValueError:
                raise ValueError(f"{line!r} is not a real date-time; write DTSTART:20260102T080000Z") from None
        elif body is None and (upper.startswith("RRULE:") or (":" not in upper and "=" in upper)):
            body = line.split(":", 1)[1] if upper.startswith("RRULE:") else line
        else:
            raise ValueError(f"{line!r} is not supported here (one RRULE and an optional DTSTART only); give each "
                             "pattern its own window")
    if body is None:
        raise ValueError(f"{value.strip()!r} has no RRULE")
    params: dict[str, str] = {}
    for part in (p.strip() for p in body.split(";")):
        key, sep, val = part.partition("=")
        key = key.strip().upper()
        if not sep or not key or not val.strip():
            raise ValueError(f"{part!r} is not KEY=VALUE")
        if key == "COUNT":
            raise ValueError("COUNT would count from DTSTART; end the rule with UNTIL=20271231T000000Z instead, or "
                             "leave it open")
        if key not in RULE_KEYS:
            raise ValueError(f"{key!r} is not supported; the keys are {', '.join(RULE_KEYS)}")
        if key in params:
            raise ValueError(f"{key} is given twice")
        params[key] = val.strip().upper()
    freq = params.get("FREQ")
    if freq not in RULE_FREQS:
        raise ValueError(f"FREQ={freq or ''} is not one of {', '.join(RULE_FREQS)} (for several times a day, write "
                         "FREQ=DAILY;BYHOUR=0,8,16;BYMINUTE=0)")
    interval_text = params.get("INTERVAL", "1")
    interval = int(interval_text) if interval_text.isdigit() else 0
    if not 1 <= interval <= RULE_MAX_INTERVAL:
        raise ValueError(f"INTERVAL={interval_text} must be a whole number from 1 to {RULE_MAX_INTERVAL} (a quarter "
                         "is FREQ=MONTHLY;INTERVAL=3)")
    if interval > 1 and dtstart is None:
        raise ValueError(f"INTERVAL={interval} needs a DTSTART to count from; write it on its own line before the "
                         "rule, like DTSTART:20260102T080000Z")
    days = {k for k in ("BYDAY", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO") if k in params}
    needs = {"WEEKLY": ("BYDAY" in days, "BYDAY (e.g. BYDAY=FR)"),
             "MONTHLY": (bool(days & {"BYDAY", "BYMONTHDAY"}), "BYDAY (e.g. BYDAY=-1FR) or BYMONTHDAY"),
             "YEARLY": (("BYMONTH" in params and bool(days & {"BYDAY", "BYMONTHDAY"}))
                        or bool(days & {"BYYEARDAY", "BYWEEKNO"}),
                        "BYMONTH with BYDAY or BYMONTHDAY (e.g. BYMONTH=3,6,9,12;BYDAY=-1FR), BYYEARDAY or BYWEEKNO")}
    if freq in needs and not needs[freq][0]:
        raise ValueError(f"FREQ={freq} needs the day given explicitly: {needs[freq][1]}")
    start = dtstart or RULE_ANCHOR
    try:
        rule = rrulestr("RRULE:" + body, dtstart=start)
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"{body!r} is not a valid rule ({e})") from None
    if not isinstance(rule, _RRule):
        raise ValueError(f"{body!r} is not a single rule")
    parsed = Rule(value.strip(), freq, interval, start, rule)
    probe = _shift_anchor(freq, interval, start, _RULE_PROBE)
    try:
        first = next(iter(rule.replace(dtstart=probe, until=None)), None)
    except (ValueError, OverflowError):
        first = None
    if first is None:
        raise ValueError(f"{body!r} never happens (no date matches all of its BY parts)")
    return parsed


def _shift_anchor(freq: str, interval: int, dtstart: dt.datetime, low: dt.datetime) -> dt.datetime:
    """``dtstart`` moved forward by whole multiples of its period (keeping the rule's phase), one period before ``low``.

    Every BY part that defaults from DTSTART keeps its value: the time of day, and the weekday for whole weeks;
    the day of the month or year is required explicitly by :func:`parse_rule`. So the instants from the shifted
    start are the rule's own, and the expansion is as short as the range asked for.
    """
    if low <= dtstart:
        return dtstart
    if freq in ("DAILY", "WEEKLY"):
        step = dt.timedelta(days=interval * (7 if freq == "WEEKLY" else 1))
        periods = max((low - dtstart) // step - 1, 0)
        return dtstart + step * periods
    months = (low.year - dtstart.year) * 12 + low.month - dtstart.month
    size = interval * (12 if freq == "YEARLY" else 1)
    periods = max(months // size - 1, 0)
    return dtstart + relativedelta(months=size * periods)


def _clock(path: str, where: str, value: Any) -> int:
    """``"16:00"`` -> seconds after midnight."""
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 16:00 as the base-60 integer 960
        hours, minutes = divmod(value, 60)
        raise ScheduleError(path, where, f"at: {value} is a number (YAML reads an unquoted {hours}:{minutes:02d} as "
                                         "base 60)", f'quote the times, like at: ["{hours:02d}:{minutes:02d}"]')
    match = _CLOCK_RE.match(value.strip()) if isinstance(value, str) else None
    if not match:
        dated = isinstance(value, dt.date) or (isinstance(value, str) and re.match(r"\s*[0-9]{4}-", value))
        hint = " (a date-time belongs to a one-off window: remove 'recurring')" if dated else ""
        raise ScheduleError(path, where, f"at: {value!r} is not a time of day{hint}",
                            'write UTC times of day as "HH:MM", like at: ["00:00", "08:00", "16:00"]')
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _moment(path: str, where: str, value: Any) -> dt.datetime:
    """A one-off instant: a full ISO 8601 date-time with a zone."""
    fix = 'write a full date-time with its zone, like at: "2026-12-25T08:00:00Z"'
    if isinstance(value, str) and _CLOCK_RE.match(value.strip()):
        raise ScheduleError(path, where, f"at: {value!r} is a time of day but the window is not recurring",
                            "add 'recurring: daily', or " + fix)
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        raise ScheduleError(path, where, f"at: {value} is a date without a time of day", fix)
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise ScheduleError(path, where, f"at: {value!r} is not an ISO 8601 date-time", fix) from None
        if "T" not in text.upper() and " " not in text:
            raise ScheduleError(path, where, f"at: {value!r} is a date without a time of day", fix)
    else:
        raise ScheduleError(path, where, f"at: {value!r} is not a date-time", fix)
    if moment.tzinfo is None:
        raise ScheduleError(path, where, f"at: {value!s} has no time zone",
                            "add Z (UTC) or an offset, like 2026-12-25T08:00:00Z")
    return moment.astimezone(dt.UTC)


# --- overlaps --------------------------------------------------------------------------------------------------


def _overlaps(start: dt.datetime, end: dt.datetime, occ_start: dt.datetime, occ_end: dt.datetime) -> bool:
    if occ_start == occ_end:  # a window without margins freezes its instant
        return start <= occ_start < end
    return occ_start < end and start < occ_end


def occurrences(windows: Sequence[Window], start: dt.datetime, end: dt.datetime) -> list[Occurrence]:
    """Every window occurrence overlapping ``[start, end]``; recurring windows expanded over that range only."""
    found: list[Occurrence] = []
    for window in windows:
        if window.rule is not None:
            instants = window.rule.instants(start - window.after, end + window.before)
        elif window.recurring == "daily":
            first = (start - window.after).date() - dt.timedelta(days=1)
            last = (end + window.before).date() + dt.timedelta(days=1)
            instants = []
            day = first
            while day <= last:
                midnight = dt.datetime.combine(day, dt.time(), dt.UTC)
                instants.extend(midnight + dt.timedelta(seconds=t) for t in window.times)
                day += dt.timedelta(days=1)
        else:
            instants = list(window.moments)
        for at in instants:
            occ = Occurrence(window.name, at, at - window.before, at + window.after)
            if _overlaps(start, end, occ.start, occ.end):
                found.append(occ)
    return sorted(found, key=lambda o: (o.start, o.name))


def next_start(
    windows: Sequence[Window], start: dt.datetime, duration: dt.timedelta, horizon: dt.timedelta = SEARCH_HORIZON
) -> dt.datetime | None:
    """Earliest ``t >= start`` with ``[t, t + duration]`` free of every window, or None within ``horizon``.

    Any start before the end of a window the rollout overlaps still overlaps it, so jumping to the latest
    such end never skips a free slot.
    """
    moment = start
    while moment <= start + horizon:
        hits = occurrences(windows, moment, moment + duration)
        if not hits:
            return moment
        later = max(o.end for o in hits)
        moment = later if later > moment else moment + dt.timedelta(seconds=1)
    return None


def evaluate(windows: Sequence[Window], start: dt.datetime, duration_seconds: int) -> Decision:
    """Check the rollout ``[start, start + duration_seconds]`` against the windows."""
    if isinstance(duration_seconds, bool) or not isinstance(duration_seconds, int) or duration_seconds <= 0:
        raise CalendarError(f"duration: must be the estimated rollout time in seconds, more than 0 (got "
                            f"{duration_seconds!r}); e.g. 2520 for 42 minutes")
    duration = dt.timedelta(seconds=duration_seconds)
    end = start + duration
    hits = tuple(occurrences(windows, start, end))
    return Decision(start, end, hits, next_start(windows, start, duration) if hits else start)


def _span(start: dt.datetime, end: dt.datetime, day: dt.date) -> str:
    """``15:45–16:05 UTC``; dates only where they differ from ``day``."""
    def clock(moment: dt.datetime, ref: dt.date) -> str:
        text = moment.strftime("%H:%M:%S" if moment.second else "%H:%M")
        return text if moment.date() == ref else f"{moment.date().isoformat()} {text}"
    return f"{clock(start, day)}–{clock(end, start.date())} UTC"


def conflict_message(decision: Decision) -> str:
    """Why a non-emergency rollout is refused, and when it could start instead."""
    day = decision.start.date()
    rollout = _span(decision.start, decision.end, day)
    estimated = format_duration(int((decision.end - decision.start).total_seconds()))
    hits = " and ".join(f"{o.name!r} {_span(o.start, o.end, day)}" for o in decision.overlaps)
    if decision.next_start is not None:
        nxt = decision.next_start
        when = nxt.strftime("%H:%M:%S" if nxt.second else "%H:%M")
        when = when if nxt.date() == day else f"{nxt.date().isoformat()} {when}"
        advice = f"start at or after {when} UTC"
    else:
        advice = (f"no {estimated} slot is free within {SEARCH_HORIZON.days} days; split the rollout into shorter "
                  "steps")
    return (f"the rollout ({rollout}, estimated {estimated}) overlaps {hits}; {advice}, or use an emergency override "
            "with a reason and a second approver")


def emergency_override(
    decision: Decision, reason: str | None, approver: str | None, operator: str, now: dt.datetime
) -> dict[str, Any]:
    """The override record to keep in the audit trail; CalendarError when it is not properly approved."""
    check_emergency(reason, approver, operator)
    return {
        "reason": str(reason).strip(),
        "approver": str(approver).strip(),
        "operator": operator.strip(),
        "overlaps": [o.to_dict() for o in decision.overlaps],
        "granted_at": format_time(now),
    }


def check_operator(operator: Any) -> str:
    """The operator's name, stripped; CalendarError when empty."""
    if not isinstance(operator, str) or not operator.strip():
        raise CalendarError(f"operator: must name the person running the rollout (got {operator!r}); e.g. "
                            "alice@ops-laptop")
    return operator.strip()


def check_emergency(reason: str | None, approver: str | None, operator: str) -> None:
    """An emergency needs a reason and a second approver who is not the operator."""
    operator = check_operator(operator)
    if not isinstance(reason, str) or not reason.strip():
        raise CalendarError("an emergency override needs a reason: set reason (e.g. 'CVE-2026-31337 exploited in "
                            "the wild, KEV-listed') and a second approver")
    if not isinstance(approver, str) or not approver.strip():
        raise CalendarError("an emergency override needs a second approver different from the operator: set "
                            "approver to the person who approved it")
    if approver.strip().casefold() == operator.casefold():
        raise CalendarError(f"an emergency override needs a second approver different from the operator "
                            f"({operator} cannot approve their own override); ask another person on call to "
                            "approve it and set approver to their name")
