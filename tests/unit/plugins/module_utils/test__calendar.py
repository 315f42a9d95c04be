# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path

import pytest
import yaml
from ansible_collections.exchangeops.patching.plugins.module_utils._calendar import (
    CalendarError,
    ScheduleError,
    Window,
    check_emergency,
    conflict_message,
    emergency_override,
    evaluate,
    format_duration,
    load_schedule,
    next_start,
    occurrences,
    parse_duration,
    parse_schedule,
    parse_start,
)
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[4]
SAMPLE = REPO / "testbed" / "freeze-windows.yml"
UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def minutes(n: int) -> dt.timedelta:
    return dt.timedelta(minutes=n)


FUNDING = Window("perpetual funding", "daily", (0, 8 * 3600, 16 * 3600), (), minutes(15), minutes(5))
EXPIRY = Window("BTC-USD quarterly expiry and settlement", None, (), (at("2026-12-25T08:00:00Z"),),
                minutes(30), minutes(15))
SCHEDULE = [FUNDING, EXPIRY]


# --- durations and times ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("1h30m15s", 5415), ("1d", 86400), (" 5m ", 300),
    ("0s", 0), (0, 0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(("value", "says"), [
    ("15", "not a duration"), ("-5m", "negative"), (-300, "negative"), (900, "no unit"), ("m", "not a duration"),
    ("", "not a duration"), ("1.5h", "not a duration"), ("30m1h", "not a duration"), ("15 m", "not a duration"),
    (True, "not a duration"), (None, "not a duration"), ([15], "not a duration"),
])
def test_parse_duration_rejects(value, says):
    with pytest.raises(ValueError, match=says):
        parse_duration(value)


@pytest.mark.parametrize(("seconds", "text"), [
    (2520, "42 min"), (5400, "1 h 30 min"), (90, "1 min 30 s"), (45, "45 s"), (3600, "1 h"), (0, "0 s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_parse_start():
    now = dt.datetime(2026, 11, 24, 9, 1, 2, 345, tzinfo=UTC)
    assert parse_start(None, now) == now.replace(microsecond=0)
    assert parse_start("", now) == now.replace(microsecond=0)
    assert parse_start("2026-11-24T10:00:00Z", now) == at("2026-11-24T10:00:00Z")
    assert parse_start("2026-11-24T12:00:00+02:00", now) == at("2026-11-24T10:00:00Z")
    assert parse_start("2026-11-24T10:00", now) == at("2026-11-24T10:00:00Z")  # no zone: UTC
    assert parse_start("2026-11-24", now) == at("2026-11-24T00:00:00Z")
    with pytest.raises(CalendarError, match=r"start: 'tomorrow' is not an ISO 8601 date-time; write it like"):
        parse_start("tomorrow", now)


# --- overlaps --------------------------------------------------------------------------------------------------


def names(windows, start, end):
    return [(o.name, o.at) for o in occurrences(windows, at(start), at(end))]


def test_rollout_between_windows_overlaps_nothing():
    decision = evaluate(SCHEDULE, at("2026-11-24T10:00:00Z"), 42 * 60)
    assert decision.allowed
    assert decision.overlaps == ()
    assert decision.next_start == at("2026-11-24T10:00:00Z")
    assert decision.rollout() == {"start": "2026-11-24T10:00:00Z", "end": "2026-11-24T10:42:00Z",
                                  "duration": 2520, "estimated": "42 min"}


def test_rollout_into_the_averaging_window_overlaps():
    decision = evaluate(SCHEDULE, at("2026-11-24T15:30:00Z"), 42 * 60)
    assert not decision.allowed
    [occ] = decision.overlaps
    assert occ.to_dict() == {"name": "perpetual funding", "at": "2026-11-24T16:00:00Z",
                             "start": "2026-11-24T15:45:00Z", "end": "2026-11-24T16:05:00Z"}
    assert decision.next_start == at("2026-11-24T16:05:00Z")


def test_touching_a_window_edge_is_not_an_overlap():
    # ends exactly when the averaging window opens / starts exactly when the window closes
    assert names([FUNDING], "2026-11-24T15:00:00Z", "2026-11-24T15:45:00Z") == []
    assert names([FUNDING], "2026-11-24T16:05:00Z", "2026-11-24T17:00:00Z") == []
    assert names([FUNDING], "2026-11-24T15:00:00Z", "2026-11-24T15:45:01Z") != []
    assert names([FUNDING], "2026-11-24T16:04:59Z", "2026-11-24T17:00:00Z") != []


def test_overlaps_across_midnight_find_the_next_days_occurrence():
    # 23:50-00:10 runs into the 00:00 funding of the next day
    assert names([FUNDING], "2026-11-24T23:50:00Z", "2026-11-25T00:10:00Z") == [
        ("perpetual funding", at("2026-11-25T00:00:00Z"))]
    # the next day's averaging window already starts at 23:45 the day before
    assert names([FUNDING], "2026-11-24T23:40:00Z", "2026-11-24T23:46:00Z") == [
        ("perpetual funding", at("2026-11-25T00:00:00Z"))]
    # and the previous day's 00:00 occurrence still freezes 00:00-00:05 of this day
    assert names([FUNDING], "2026-11-25T00:03:00Z", "2026-11-25T00:04:00Z") == [
        ("perpetual funding", at("2026-11-25T00:00:00Z"))]


def test_a_long_rollout_overlaps_every_occurrence_it_spans():
    found = names([FUNDING], "2026-11-24T07:00:00Z", "2026-11-25T01:00:00Z")
    assert [a for _n, a in found] == [at("2026-11-24T08:00:00Z"), at("2026-11-24T16:00:00Z"),
                                      at("2026-11-25T00:00:00Z")]


def test_margins_longer_than_a_day_are_expanded():
    weekly_like = Window("maintenance freeze", "daily", (12 * 3600,), (), dt.timedelta(hours=30), dt.timedelta(0))
    # 12:00 on the 26th with 30 h before freezes from 06:00 on the 25th
    assert at("2026-11-26T12:00:00Z") in [o.at for o in occurrences(
        [weekly_like], at("2026-11-25T07:00:00Z"), at("2026-11-25T07:10:00Z"))]


def test_one_off_window():
    decision = evaluate(SCHEDULE, at("2026-12-25T07:00:00Z"), 3600)
    assert [o.name for o in decision.overlaps] == ["BTC-USD quarterly expiry and settlement", "perpetual funding"]
    assert decision.next_start == at("2026-12-25T08:15:00Z")  # the settlement window ends after the funding one
    assert names([EXPIRY], "2026-12-24T07:00:00Z", "2026-12-24T09:00:00Z") == []  # one-off: not the day before
    assert names([EXPIRY], "2026-12-25T08:14:00Z", "2026-12-25T08:20:00Z") != []


def test_a_window_without_margins_freezes_its_instant():
    instant = Window("index rebalance", None, (), (at("2026-11-24T12:00:00Z"),), dt.timedelta(0), dt.timedelta(0))
    assert names([instant], "2026-11-24T11:00:00Z", "2026-11-24T12:30:00Z") != []
    assert names([instant], "2026-11-24T12:00:00Z", "2026-11-24T12:30:00Z") != []
    assert names([instant], "2026-11-24T11:00:00Z", "2026-11-24T12:00:00Z") == []
    assert next_start([instant], at("2026-11-24T11:59:00Z"), minutes(5)) == at("2026-11-24T12:00:01Z")


# --- next_start ------------------------------------------------------------------------------------------------


def test_next_start_jumps_over_windows_that_follow_each_other():
    # the funding window ends 16:05; a 7 h 41 min rollout from there reaches into the 00:00 window (23:45)
    start = at("2026-11-24T15:30:00Z")
    assert next_start(SCHEDULE, start, dt.timedelta(hours=7, minutes=40)) == at("2026-11-24T16:05:00Z")
    assert next_start(SCHEDULE, start, dt.timedelta(hours=7, minutes=41)) is None  # no 8 h gap exists


def test_next_start_searches_seven_days_only():
    blocked = Window("a whole week", None, (), (at("2026-11-28T00:00:00Z"),), dt.timedelta(days=4),
                     dt.timedelta(days=3, hours=1))
    start = at("2026-11-24T00:00:00Z")
    assert next_start([blocked], start, minutes(10)) is None
    assert next_start([blocked], start, minutes(10), horizon=dt.timedelta(days=8)) == at("2026-12-01T01:00:00Z")


def test_next_start_is_start_when_free():
    assert next_start(SCHEDULE, at("2026-11-24T10:00:00Z"), minutes(42)) == at("2026-11-24T10:00:00Z")


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(min_value=0, max_value=2 * 24 * 60), length=st.integers(min_value=1, max_value=8 * 60))
def test_next_start_is_free_and_earliest(offset, length):
    start = at("2026-12-24T00:00:00Z") + minutes(offset)
    duration = minutes(length)
    found = next_start(SCHEDULE, start, duration)
    if found is None:
        assert length > 7 * 60 + 40  # the widest gap between funding windows
        return
    assert found >= start
    assert occurrences(SCHEDULE, found, found + duration) == []
    # every whole minute before it (windows are on minute boundaries) still overlaps something
    probe = start
    while probe < found:
        assert occurrences(SCHEDULE, probe, probe + duration), probe
        probe += minutes(1)


# --- messages and the emergency override -----------------------------------------------------------------------


def test_conflict_message_names_rollout_window_and_fix():
    decision = evaluate(SCHEDULE, at("2026-11-24T15:30:00Z"), 42 * 60)
    assert conflict_message(decision) == (
        "the rollout (15:30–16:12 UTC, estimated 42 min) overlaps 'perpetual funding' 15:45–16:05 UTC; start at or "
        "after 16:05 UTC, or use an emergency override with a reason and a second approver"
    )


def test_conflict_message_across_midnight_gives_dates():
    decision = evaluate(SCHEDULE, at("2026-11-24T23:50:00Z"), 20 * 60)
    msg = conflict_message(decision)
    assert "overlaps 'perpetual funding' 23:45–2026-11-25 00:05 UTC" in msg
    assert "start at or after 2026-11-25 00:05 UTC" in msg


def test_conflict_message_without_a_free_slot():
    decision = evaluate(SCHEDULE, at("2026-11-24T15:30:00Z"), 9 * 3600)
    assert decision.next_start is None
    assert "no 9 h slot is free within 7 days; split the rollout" in conflict_message(decision)


def test_emergency_override_record():
    decision = evaluate(SCHEDULE, at("2026-11-24T15:30:00Z"), 42 * 60)
    record = emergency_override(decision, " KEV-listed RCE ", "bob@ops-desktop", "alice@ops-laptop",
                                at("2026-11-24T15:31:07Z"))
    assert record == {
        "reason": "KEV-listed RCE", "approver": "bob@ops-desktop", "operator": "alice@ops-laptop",
        "overlaps": [{"name": "perpetual funding", "at": "2026-11-24T16:00:00Z", "start": "2026-11-24T15:45:00Z",
                      "end": "2026-11-24T16:05:00Z"}],
        "granted_at": "2026-11-24T15:31:07Z",
    }


@pytest.mark.parametrize(("reason", "approver", "operator", "says"), [
    ("KEV", "Alice@Ops-Laptop", "alice@ops-laptop", "second approver different from the operator"),
    ("KEV", " alice ", "alice", "second approver different from the operator"),
    ("KEV", None, "alice", "second approver different from the operator"),
    ("KEV", "  ", "alice", "second approver different from the operator"),
    (None, "bob", "alice", "needs a reason"),
    ("", "bob", "alice", "needs a reason"),
    ("KEV", "bob", " ", "operator: must name the person"),
])
def test_emergency_needs_reason_and_second_approver(reason, approver, operator, says):
    with pytest.raises(CalendarError, match=says):
        check_emergency(reason, approver, operator)


@pytest.mark.parametrize("duration", [0, -60, True, "60"])
def test_duration_must_be_positive_seconds(duration):
    with pytest.raises(CalendarError, match=r"duration: must be the estimated rollout time in seconds"):
        evaluate(SCHEDULE, at("2026-11-24T10:00:00Z"), duration)


# --- schedule files --------------------------------------------------------------------------------------------


def test_sample_schedule_loads():
    windows = load_schedule(str(SAMPLE))
    assert windows == [FUNDING, EXPIRY]


def test_schedule_accepts_unquoted_datetimes_single_times_and_empty():
    doc = "windows:\n  - name: expiry\n    at: 2026-12-25T08:00:00Z\n  - name: daily\n    recurring: daily\n" \
          "    at: \"08:00:30\"\n    before: 90s\n"
    windows = parse_schedule(yaml.safe_load(doc), "s.yml")
    assert windows[0].moments == (at("2026-12-25T08:00:00Z"),)
    assert windows[1].times == (8 * 3600 + 30,)
    assert windows[1].before == dt.timedelta(seconds=90)
    assert windows[1].after == dt.timedelta(0)
    assert parse_schedule({"windows": []}, "s.yml") == []


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "freeze.yml"
    path.write_text(text)
    return str(path)


BAD_SCHEDULES = [
    ("", "must be a mapping with a 'windows' list, found an empty file", "windows: []"),
    ("windows: [\n  - name: x\n", "not valid YAML", "fix the YAML syntax"),
    ("- name: x\n", "found a list", "write 'windows:'"),
    ("windows: []\nwindow: []\n", "unknown top-level key 'window'", "the only top-level key is 'windows'"),
    ("windows:\n", "windows: must be a list of windows, found None", "'windows: []' for none"),
    ("windows:\n  - at: '08:00'\n    recurring: daily\n", "windows[0]: 'name' is missing", "give the window a name"),
    ("windows:\n  - name: funding\n    recurring: daily\n    at: ['08:00']\n    befor: 15m\n",
     "window 'funding': unknown key 'befor'", "the keys of a window are name, recurring, at, rrule, before, after"),
    ("windows:\n  - name: funding\n    recurring: daily\n", "window 'funding': 'at' is missing",
     'give the times of day ("00:00")'),
    ("windows:\n  - name: funding\n    recurring: daily\n    at: ['25:00']\n",
     "window 'funding': at: '25:00' is not a time of day", 'write UTC times of day as "HH:MM"'),
    ("windows:\n  - name: funding\n    recurring: daily\n    at: [16:00]\n",
     "window 'funding': at: 960 is a number (YAML reads an unquoted 16:00 as base 60)", 'like at: ["16:00"]'),
    ("windows:\n  - name: funding\n    recurring: weekly\n    at: ['16:00']\n",
     "window 'funding': recurring is 'weekly', which is not supported", "use 'recurring: daily'"),
    ("windows:\n  - name: funding\n    recurring: daily\n    at: ['16:00']\n    before: -15m\n",
     "window 'funding': before: '-15m' is negative", "a duration that is zero or more, like before: 15m"),
    ("windows:\n  - name: funding\n    recurring: daily\n    at: ['16:00']\n    after: 5\n",
     "window 'funding': after: 5 has no unit", "like after: 15m"),
    ("windows:\n  - name: funding\n    recurring: daily\n    at: ['16:00']\n    after: 5 min\n",
     "window 'funding': after: '5 min' is not a duration like 90s", "like after: 15m"),
    ("windows:\n  - name: expiry\n    at: '08:00'\n",
     "window 'expiry': at: '08:00' is a time of day but the window is not recurring", "add 'recurring: daily'"),
    ("windows:\n  - name: expiry\n    at: '2026-12-25T08:00:00'\n",
     "window 'expiry': at: 2026-12-25T08:00:00 has no time zone", "add Z (UTC) or an offset"),
    ("windows:\n  - name: expiry\n    at: 2026-12-25\n",
     "window 'expiry': at: 2026-12-25 is a date without a time of day", "write a full date-time with its zone"),
    ("windows:\n  - name: expiry\n    at: 'christmas'\n",
     "window 'expiry': at: 'christmas' is not an ISO 8601 date-time", "write a full date-time"),
    ("windows:\n  - name: funding\n    recurring: daily\n    at: ['2026-12-25T08:00:00Z']\n",
     "is not a time of day (a date-time belongs to a one-off window: remove 'recurring')", "HH:MM"),
    ("windows:\n  - name: x\n    at: '2026-12-25T08:00:00Z'\n  - name: x\n    at: '2026-12-26T08:00:00Z'\n",
     "windows[1] 'x': a second window has this name", "give every window its own name"),
    ("windows:\n  - just a string\n", "windows[0]: must be a mapping", "'- name: perpetual funding'"),
]


@pytest.mark.parametrize(("text", "problem", "fix"), BAD_SCHEDULES, ids=[b[1][:40] for b in BAD_SCHEDULES])
def test_bad_schedules_name_file_window_and_fix(tmp_path, text, problem, fix):
    path = write(tmp_path, text)
    with pytest.raises(ScheduleError) as info:
        load_schedule(path)
    msg = str(info.value)
    assert msg.startswith(path + ": "), msg
    assert problem in msg
    assert fix in msg


def test_missing_schedule_file(tmp_path):
    path = str(tmp_path / "nope.yml")
    with pytest.raises(ScheduleError, match=r"nope.yml: schedule file not found; check the path, or write one like"):
        load_schedule(path)


def test_schedule_folder_is_refused(tmp_path):
    with pytest.raises(ScheduleError, match=r"is a folder, not a schedule file"):
        load_schedule(str(tmp_path))


def test_schedule_error_pickles():
    err = ScheduleError("s.yml", "window 'x'", "bad", "fix it")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "s.yml: window 'x': bad; fix it"
