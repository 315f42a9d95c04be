# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Recurring freeze windows from RFC 5545 rules: weekly and monthly expiries, UTC only, strictly validated."""

from __future__ import annotations

import datetime as dt

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._calendar import (
    ScheduleError,
    conflict_message,
    evaluate,
    next_start,
    occurrences,
    parse_rule,
    parse_schedule,
)

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def schedule(*windows: dict) -> list:
    return parse_schedule({"windows": list(windows)}, "freeze.yml")


WEEKLY = {"name": "weekly options expiry", "rrule": "FREQ=WEEKLY;BYDAY=FR;BYHOUR=8;BYMINUTE=0", "before": "30m",
          "after": "15m"}
MONTHLY = {"name": "monthly futures expiry", "rrule": "FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=8;BYMINUTE=0", "before": "30m",
           "after": "15m"}


def test_weekly_expiry_freezes_every_friday_only():
    windows = schedule(WEEKLY)
    hits = occurrences(windows, at("2026-11-01T00:00:00Z"), at("2026-11-30T00:00:00Z"))
    assert [h.at for h in hits] == [at(f"2026-11-{d:02d}T08:00:00Z") for d in (6, 13, 20, 27)]
    assert (hits[0].start, hits[0].end) == (at("2026-11-06T07:30:00Z"), at("2026-11-06T08:15:00Z"))
    # Thursday at the same time is free; Friday inside the averaging window is not
    assert evaluate(windows, at("2026-11-26T07:40:00Z"), 1800).allowed
    assert not evaluate(windows, at("2026-11-27T07:40:00Z"), 1800).allowed


def test_last_friday_of_the_month():
    windows = schedule(MONTHLY)
    hits = occurrences(windows, at("2026-11-01T00:00:00Z"), at("2027-03-01T00:00:00Z"))
    assert [h.at.date().isoformat() for h in hits] == ["2026-11-27", "2026-12-25", "2027-01-29", "2027-02-26"]
    # a Friday that is not the last one of its month is free
    assert evaluate(windows, at("2026-11-20T07:45:00Z"), 3600).allowed


def test_quarterly_expiry_last_friday_of_the_quarter_month():
    windows = schedule({"name": "quarterly", "rrule": "FREQ=YEARLY;BYMONTH=3,6,9,12;BYDAY=-1FR;BYHOUR=8",
                        "before": "30m"})
    hits = occurrences(windows, at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
    assert [h.at.date().isoformat() for h in hits] == ["2026-03-27", "2026-06-26", "2026-09-25", "2026-12-25"]


@pytest.mark.parametrize("day", ["2026-03-08", "2026-03-29", "2026-10-25", "2026-11-01"])
def test_rules_are_utc_and_dst_free(day):
    # the US and EU clock changes of 2026: a Sunday 01:30 UTC window stays at 01:30 UTC
    windows = schedule({"name": "sunday settlement", "rrule": "FREQ=WEEKLY;BYDAY=SU;BYHOUR=1;BYMINUTE=30"})
    hits = occurrences(windows, at(f"{day}T00:00:00Z"), at(f"{day}T23:59:59Z"))
    assert [h.at for h in hits] == [at(f"{day}T01:30:00Z")]
    assert hits[0].at.utcoffset() == dt.timedelta(0)


def test_window_spanning_midnight_is_found_from_either_day():
    windows = schedule({"name": "daily close", "rrule": "FREQ=DAILY;BYHOUR=23;BYMINUTE=50", "before": "10m",
                        "after": "20m"})
    after_midnight = evaluate(windows, at("2026-11-25T00:05:00Z"), 600)
    assert [o.at for o in after_midnight.overlaps] == [at("2026-11-24T23:50:00Z")]
    assert after_midnight.next_start == at("2026-11-25T00:10:00Z")
    before_midnight = evaluate(windows, at("2026-11-24T23:35:00Z"), 600)
    assert [o.end for o in before_midnight.overlaps] == [at("2026-11-25T00:10:00Z")]
    assert "2026-11-25 00:10" in conflict_message(before_midnight)


def test_monthly_window_at_midnight_reaches_back_into_the_previous_day():
    windows = schedule({"name": "month start", "rrule": "FREQ=MONTHLY;BYMONTHDAY=1;BYHOUR=0", "before": "30m"})
    assert not evaluate(windows, at("2026-11-30T23:40:00Z"), 60).allowed
    assert evaluate(windows, at("2026-11-30T23:00:00Z"), 1800).allowed  # touches the edge only


def test_next_start_jumps_over_rule_windows():
    windows = schedule(WEEKLY, {"name": "funding", "recurring": "daily", "at": ["08:00"], "before": "15m",
                                "after": "5m"})
    assert next_start(windows, at("2026-11-27T07:00:00Z"), dt.timedelta(minutes=40)) == at("2026-11-27T08:15:00Z")


def test_interval_with_dtstart_keeps_its_phase():
    rule = parse_rule("DTSTART:20260102T000000Z\nRRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY=FR;BYHOUR=8")
    assert rule.instants(at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z")) == [
        at("2026-11-06T08:00:00Z"), at("2026-11-20T08:00:00Z")]


@pytest.mark.parametrize("text", [
    "FREQ=WEEKLY;BYDAY=FR;BYHOUR=8;BYMINUTE=0",
    "FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=8",
    "DTSTART:20250117T083000Z\nRRULE:FREQ=MONTHLY;INTERVAL=3;BYMONTHDAY=31,-1",
    "DTSTART:20240105T080000Z\nRRULE:FREQ=WEEKLY;INTERVAL=3;BYDAY=FR,MO;WKST=SU",
    "DTSTART:20230101T160000Z\nRRULE:FREQ=DAILY;INTERVAL=5",
    "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYHOUR=12",
])
@pytest.mark.parametrize("low", ["2026-02-27T00:00:00Z", "2026-11-24T15:30:00Z", "2028-02-01T09:00:00Z"])
def test_expansion_from_a_shifted_start_matches_the_whole_rule(text, low):
    rule = parse_rule(text)
    start = at(low)
    end = start + dt.timedelta(days=400)
    assert rule.instants(start, end) == list(rule.rule.between(start, end, inc=True))


def test_until_ends_the_rule():
    windows = schedule({"name": "old expiry", "rrule": "FREQ=WEEKLY;BYDAY=FR;BYHOUR=8;UNTIL=20261201T000000Z"})
    assert occurrences(windows, at("2026-11-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))[-1].at == at(
        "2026-11-27T08:00:00Z")


BAD_RULES = [
    ("FREQ=HOURLY;BYMINUTE=0", "FREQ=HOURLY is not one of YEARLY, MONTHLY, WEEKLY, DAILY"),
    ("FREQ=WEEKLY;BYHOUR=8", "FREQ=WEEKLY needs the day given explicitly: BYDAY"),
    ("FREQ=MONTHLY;BYHOUR=8", "FREQ=MONTHLY needs the day given explicitly"),
    ("FREQ=YEARLY;BYDAY=FR", "FREQ=YEARLY needs the day given explicitly"),
    ("FREQ=WEEKLY;BYDAY=XX", "is not a valid rule (invalid 'BYDAY': XX)"),
    ("FREQ=DAILY;BYHOUR=24", "is not a valid rule"),
    ("FREQ=WEEKLY;BYDAY=FR;COUNT=4", "COUNT would count from DTSTART; end the rule with UNTIL"),
    ("FREQ=WEEKLY;BYDAY=FR;INTERVAL=2", "INTERVAL=2 needs a DTSTART to count from"),
    ("DTSTART:20260102T000000Z\nRRULE:FREQ=WEEKLY;BYDAY=FR;INTERVAL=13", "INTERVAL=13 must be a whole number from 1"),
    ("FREQ=DAILY;TZID=X", "'TZID' is not supported; the keys are"),
    ("FREQ=DAILY;FREQ=WEEKLY", "FREQ is given twice"),
    ("FREQ=DAILY;BYHOUR", "'BYHOUR' is not KEY=VALUE"),
    ("DTSTART;TZID=Europe/London:20260101T080000\nRRULE:FREQ=DAILY", "is not one UTC start"),
    ("DTSTART:20260101T080000\nRRULE:FREQ=DAILY", "is not one UTC start"),
    ("DTSTART:20261301T080000Z\nRRULE:FREQ=DAILY", "is not a real date-time"),
    ("FREQ=DAILY\nEXDATE:20261225T080000Z", "is not supported here (one RRULE and an optional DTSTART only)"),
    ("DTSTART:20260101T080000Z", "has no RRULE"),
    ("FREQ=DAILY;UNTIL=20270101", "is not a valid rule (RRULE UNTIL values must be specified in UTC"),
    ("FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=30", "never happens"),
    ("FREQ=MONTHLY;BYDAY=MO;BYSETPOS=6", "never happens"),
    ("", "is not an RFC 5545 rule"),
]


@pytest.mark.parametrize(("text", "problem"), BAD_RULES)
def test_bad_rules_name_the_window_the_problem_and_the_fix(text, problem):
    with pytest.raises(ScheduleError) as err:
        schedule({"name": "expiry", "rrule": text})
    message = str(err.value)
    assert message.startswith("freeze.yml: window 'expiry': rrule: ")
    assert problem in message
    assert message.endswith("write a rule like rrule: FREQ=MONTHLY;BYDAY=-1FR;BYHOUR=8;BYMINUTE=0 (the last Friday "
                            "of the month at 08:00 UTC)")


def test_a_rule_with_at_or_recurring_is_refused():
    with pytest.raises(ScheduleError, match="has 'rrule' together with 'at' or 'recurring'"):
        schedule({"name": "expiry", "rrule": "FREQ=WEEKLY;BYDAY=FR", "at": "08:00"})


def test_a_rule_window_with_a_bad_margin_is_refused():
    with pytest.raises(ScheduleError, match="window 'expiry': after: '-5m' is negative"):
        schedule({"name": "expiry", "rrule": "FREQ=WEEKLY;BYDAY=FR", "after": "-5m"})


def test_recurring_weekly_points_to_rrule():
    with pytest.raises(ScheduleError, match="an RFC 5545 rule in 'rrule'"):
        schedule({"name": "expiry", "recurring": "weekly", "at": ["08:00"]})
