# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import datetime as dt
import itertools
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._audit import (
    GENESIS,
    append,
    canonical,
    default_path,
    parse_ts,
    read_records,
    record_hash,
    trim,
    verify,
)
from ansible_collections.exchangeops.patching.plugins.module_utils._audit_runs import (
    find_run,
    group_runs,
    history,
    metrics,
    prometheus,
)
from ansible_collections.exchangeops.patching.plugins.module_utils._redact import REDACTED, Redactor

NOW = dt.datetime(2026, 11, 24, tzinfo=dt.UTC)


def rec(run: str, kind: str, ts: str, **fields) -> dict:
    return {"run": run, "kind": kind, "ts": ts, **fields}


def opened(run: str, ts: str, playbook: str, **fields) -> dict:
    base = {"operator": "alice", "approver": None, "reason": None, "emergency": False, "patch_id": None,
            "component": None, "check_mode": False, "extra_vars": {}}
    return rec(run, "change_opened", ts, playbook=playbook, **{**base, **fields})


def closed(run: str, started: str, ts: str, outcome: str) -> dict:
    return rec(run, "change_closed", ts, outcome=outcome, stats={}, started=started, finished=ts)


def event(run: str, ts: str, name: str, **fields) -> dict:
    return rec(run, "event", ts, event=name, play="p", task=fields.pop("task", "t"), host=fields.pop("host", "h"),
               changed=None, res=fields.pop("res", {}), duration_s=None, **fields)


def trail(path: Path, n: int = 6) -> list[dict]:
    records = [opened("r1", "2026-11-20T10:00:00.000000Z", "rolling_patch.yml")]
    records += [event("r1", f"2026-11-20T10:00:0{i}.000000Z", "runner_on_ok") for i in range(1, n - 1)]
    records.append(closed("r1", "2026-11-20T10:00:00.000000Z", "2026-11-20T10:01:00.000000Z", "successful"))
    return append(str(path), records)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


# --- chain ----------------------------------------------------------------------------------

def test_append_chains_seq_prev_and_hash_and_creates_private_files(tmp_path):
    path = tmp_path / "state" / "exchpatch" / "audit.jsonl"
    written = trail(path)
    assert [r["seq"] for r in written] == [1, 2, 3, 4, 5, 6]
    assert written[0]["prev"] == GENESIS
    for before, after in itertools.pairwise(written):
        assert after["prev"] == before["hash"]
    for r in written:
        assert r["hash"] == record_hash(r) and r["v"] == 2 and r["mac"] == "sha256"
    # the file holds exactly the canonical form, one record per line
    assert lines(path) == [canonical(r) + "\n" for r in written]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    # a second writer continues the chain of the first
    more = append(str(path), [event("r2", "2026-11-20T11:00:00.000000Z", "runner_on_ok")])
    assert more[0]["seq"] == 7 and more[0]["prev"] == written[-1]["hash"]
    assert verify(str(path)) == (7, [])


def test_hash_is_sha256_of_the_canonical_record_without_hash():
    import hashlib

    r = {"b": 1, "a": "é", "hash": "x"}
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    assert record_hash(r) == hashlib.sha256('{"a":"é","b":1}'.encode()).hexdigest()


def _rewrite(path: Path, new_lines: list[str]) -> None:
    path.write_text("".join(new_lines))


def test_edited_record_is_reported_on_its_line(tmp_path):
    path = tmp_path / "a.jsonl"
    trail(path)
    ls = lines(path)
    ls[2] = ls[2].replace('"host":"h"', '"host":"evil"')
    _rewrite(path, ls)
    count, problems = verify(str(path))
    assert count == 6
    assert [(p.line, p.seq) for p in problems] == [(3, 3)]
    assert "edited" in problems[0].what


def test_edited_and_rehashed_record_breaks_the_next_link(tmp_path):
    path = tmp_path / "a.jsonl"
    trail(path)
    ls = lines(path)
    r = json.loads(ls[2])
    r["host"] = "evil"
    r["hash"] = record_hash(r)
    ls[2] = canonical(r) + "\n"
    _rewrite(path, ls)
    problems = verify(str(path))[1]
    assert [(p.line, p.seq) for p in problems] == [(4, 4)]
    assert "chain broken" in problems[0].what and "line 3 (seq 3)" in problems[0].what


def test_removed_record_is_reported_where_the_gap_is(tmp_path):
    path = tmp_path / "a.jsonl"
    trail(path)
    ls = lines(path)
    del ls[2]
    _rewrite(path, ls)
    problems = verify(str(path))[1]
    assert {(p.line, p.seq) for p in problems} == {(3, 4)}
    whats = " ".join(p.what for p in problems)
    assert "chain broken" in whats and "seq jumps from 2 to 4: 1 record(s) removed" in whats


def test_inserted_record_is_reported(tmp_path):
    path = tmp_path / "a.jsonl"
    written = trail(path)
    fake = dict(written[1], host="forged", seq=3, prev=written[1]["hash"])
    fake["hash"] = record_hash(fake)
    ls = lines(path)
    ls.insert(2, canonical(fake) + "\n")
    _rewrite(path, ls)
    problems = verify(str(path))[1]
    # the forged record itself chains well; the genuine record after it does not
    assert {p.line for p in problems} == {4}
    assert any("seq 3 after 3" in p.what for p in problems)
    assert any("chain broken" in p.what for p in problems)


def test_reordered_records_are_reported(tmp_path):
    path = tmp_path / "a.jsonl"
    trail(path)
    ls = lines(path)
    ls[2], ls[3] = ls[3], ls[2]
    _rewrite(path, ls)
    problems = verify(str(path))[1]
    assert {p.line for p in problems} >= {3, 4}
    assert all("chain broken" in p.what or "seq" in p.what for p in problems)


def test_truncated_last_line_is_reported_and_the_next_writer_keeps_the_chain(tmp_path):
    path = tmp_path / "a.jsonl"
    written = trail(path)
    text = path.read_text()
    path.write_text(text[: len(text) - 40])
    problems = verify(str(path))[1]
    assert [(p.line, p.seq) for p in problems] == [(6, None)]
    assert "truncated" in problems[0].what
    # a later run appends after a newline, chained to the last whole record
    more = append(str(path), [event("r2", "2026-11-21T00:00:00.000000Z", "runner_on_ok")])
    assert more[0]["seq"] == 6 and more[0]["prev"] == written[4]["hash"]
    count, problems = verify(str(path))
    assert count == 6
    assert [p.line for p in problems] == [6]
    assert "not a JSON record" in problems[0].what


def test_verify_of_a_missing_file_raises_and_reading_it_is_empty(tmp_path):
    with pytest.raises(FileNotFoundError):
        verify(str(tmp_path / "none.jsonl"))
    assert read_records(str(tmp_path / "none.jsonl")) == []


def _writer(path: str, name: str, n: int) -> None:
    for i in range(n):
        append(path, [event(name, f"2026-11-20T10:00:00.{i:06d}Z", "runner_on_ok")])


def test_concurrent_writers_interleave_whole_chained_records(tmp_path):
    path = str(tmp_path / "a.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, name, 150)) for name in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert verify(path) == (450, [])
    runs = {r["run"] for r in read_records(path)}
    assert runs == {"a", "b", "c"}


def test_default_path_follows_env_then_xdg_then_home():
    assert default_path({"EXCHPATCH_AUDIT_FILE": "/x/a.jsonl", "XDG_STATE_HOME": "/s"}) == "/x/a.jsonl"
    assert default_path({"XDG_STATE_HOME": "/s"}) == "/s/exchpatch/audit.jsonl"
    assert default_path({}).endswith("/.local/state/exchpatch/audit.jsonl")


# --- redaction ------------------------------------------------------------------------------

class FakeEncryptedString:
    """Stands in for Ansible's vault-encrypted string, whose str() decrypts."""

    def __str__(self) -> str:
        return "decrypted-vault-value"


def test_redaction_by_key_name_and_by_known_value():
    r = Redactor()
    inventory = {"exchange_admin_tokens": {"match-0a": "tok-aaaaaaaaaaaa", "match-0b": "tok-bbbbbbbbbbbb"},
                 "vault_db_password": "hunter2hunter2", "exchange_shard": 0, "short_token": "abc"}
    r.learn_from(inventory)
    # short secrets are learned too (matched as whole values only: see _redact)
    assert r.secrets == {"tok-aaaaaaaaaaaa", "tok-bbbbbbbbbbbb", "hunter2hunter2", "abc"}
    out = r.redact({
        "Authorization": "Bearer tok-aaaaaaaaaaaa",
        "API_KEY": 12345,
        "msg": "GET http://n/v1/status with tok-bbbbbbbbbbbb failed",
        "nested": [{"url": "https://u:hunter2hunter2@host/"}],
        "ssh_private_key_file": "/k",
        "empty_token": None,
        "enc": FakeEncryptedString(),
        "ok": "keep me",
    })
    assert out == {
        "Authorization": REDACTED,
        "API_KEY": REDACTED,
        "msg": f"GET http://n/v1/status with {REDACTED} failed",
        "nested": [{"url": f"https://u:{REDACTED}@host/"}],
        "ssh_private_key_file": REDACTED,
        "empty_token": None,
        "enc": REDACTED,
        "ok": "keep me",
    }
    assert "tok-" not in json.dumps(out)
    # a vault-encrypted value under a secret key is learned in plain text, so templated copies are cut
    r.learn_from({"vault_api_key": FakeEncryptedString()})
    assert r.redact({"msg": "key decrypted-vault-value"}) == {"msg": f"key {REDACTED}"}


def test_trim_cuts_long_values_without_dropping_small_ones():
    assert trim("x" * 10) == "x" * 10
    assert trim("x" * 3000).startswith("x" * 2000) and "1000 more characters" in trim("x" * 3000)
    big = trim([{"n": "y" * 100}] * 200)
    assert isinstance(big, str) and "200 items" in big
    assert trim({"gates": [{"name": "ready", "ok": True}]}) == {"gates": [{"name": "ready", "ok": True}]}


# --- runs, history, metrics -----------------------------------------------------------------

def hand_trail(path: Path) -> None:
    """Known answers:
    - plan P: CVE-A first seen 2026-10-30 (feed), CVE-B 2026-11-17 (feed)
    - D1 rolling_patch fixing CVE-A, successful, closed 2026-11-20T10:30Z -> MTTR(A) = 21 d 10.5 h
    - D2 rolling_patch rolled back and converged: first (not ignored) failure 09:05, closed 09:20 -> TTR 900 s
    - C check-mode rolling_patch: not a deployment
    - D4 rolling_patch fixing CVE-C failed (failure 08:10), R1 rollback.yml successful at 08:40 -> TTR 1800 s
    - I rolling_patch killed: no change_closed -> interrupted (a deployment, not a failed one)
    """
    t = "2026-11-{}T{}:00.000000Z".format
    records = [
        opened("P", t("01", "00:00"), "plan.yml"),
        rec("P", "change_updated", t("01", "00:01"),
            change={"patches": ["x"], "cve_first_seen": {"CVE-A": "2026-10-30", "CVE-B": "2026-11-17"}}),
        closed("P", t("01", "00:00"), t("01", "00:02"), "successful"),
        opened("D1", t("20", "10:00"), "rolling_patch.yml", patch_id="me-1.4.3", operator="bob"),
        rec("D1", "change_updated", t("20", "10:01"),
            change={"patch_id": "me-1.4.3", "component": "matching-engine", "version": "1.4.3", "cves": ["CVE-A"]}),
        rec("D1", "change_updated", t("20", "10:29"), change={"converged_version": "1.4.3", "rolled_back": False}),
        closed("D1", t("20", "10:00"), t("20", "10:30"), "successful"),
        opened("D2", t("21", "09:00"), "rolling_patch.yml", emergency=True, approver="carol", reason="KEV"),
        rec("D2", "change_updated", t("21", "09:00"),
            change={"patch_id": "me-1.4.4", "component": "matching-engine", "version": "1.4.4", "cves": [],
                    "approver": None}),
        event("D2", t("21", "09:01"), "runner_on_failed", ignored=True),
        event("D2", t("21", "09:05"), "runner_on_failed", ignored=False),
        rec("D2", "change_updated", t("21", "09:19"),
            change={"rolled_back": True, "converged_version": "1.4.3", "failed_nodes": ["match-0b"]}),
        closed("D2", t("21", "09:00"), t("21", "09:20"), "rolled_back"),
        opened("C", t("21", "12:00"), "rolling_patch.yml", check_mode=True, patch_id="me-1.5.0"),
        closed("C", t("21", "12:00"), t("21", "12:01"), "check"),
        opened("D4", t("22", "08:00"), "rolling_patch.yml"),
        rec("D4", "change_updated", t("22", "08:01"),
            change={"patch_id": "me-1.5.0", "component": "matching-engine", "version": "1.5.0", "cves": ["CVE-C"]}),
        event("D4", t("22", "08:10"), "runner_on_failed", ignored=False),
        opened("R1", t("22", "08:20"), "rollback.yml", component="matching-engine"),
        closed("D4", t("22", "08:00"), t("22", "08:15"), "failed"),
        rec("R1", "change_updated", t("22", "08:21"), change={"version": "1.4.3"}),
        closed("R1", t("22", "08:20"), t("22", "08:40"), "successful"),
        opened("X", t("22", "09:00"), "rolling_patch.yml", patch_id="me-9.9.9"),
        rec("X", "change_updated", t("22", "09:00"), change={"stage": "preflight"}),
        event("X", t("22", "09:01"), "runner_on_failed", ignored=False),
        closed("X", t("22", "09:00"), t("22", "09:02"), "refused"),
        opened("I", t("23", "07:00"), "rolling_patch.yml", patch_id="me-1.5.1"),
        event("I", t("23", "07:01"), "runner_on_ok"),
    ]
    append(str(path), records)


def test_history_rows_merge_the_change_and_mark_interrupted_runs(tmp_path):
    path = tmp_path / "a.jsonl"
    hand_trail(path)
    rows = {r["run"]: r for r in history(group_runs(read_records(str(path))))}
    assert list(rows) == ["P", "D1", "D2", "C", "D4", "R1", "X", "I"]
    assert rows["X"]["outcome"] == "refused"
    d2 = rows["D2"]
    assert (d2["patch_id"], d2["component"], d2["version"], d2["outcome"]) == (
        "me-1.4.4", "matching-engine", "1.4.4", "rolled_back")
    # a null in a later update never erases what the change_opened recorded
    assert (d2["emergency"], d2["approver"], d2["reason"]) == (True, "carol", "KEV")
    assert d2["duration_s"] == 1200.0
    assert rows["D1"]["operator"] == "bob" and rows["D1"]["cves"] == ["CVE-A"]
    assert rows["C"]["check_mode"] is True and rows["C"]["outcome"] == "check"
    assert rows["I"]["outcome"] == "interrupted" and rows["I"]["finished"] is None and rows["I"]["duration_s"] is None


def test_metrics_on_a_hand_built_trail(tmp_path):
    path = tmp_path / "a.jsonl"
    hand_trail(path)
    m = metrics(group_runs(read_records(str(path))), now=NOW)
    assert m["deployments"] == 4  # D1, D2, D4, I; not the check run, not the refused X
    assert m["failed_deployments"] == 2  # D2 rolled_back, D4 failed
    assert m["change_failure_rate"] == 0.5
    assert m["rollbacks"] == 2  # R1 + D2
    cves = {r["cve"]: r for r in m["mttr"]["per_cve"]}
    assert cves["CVE-A"]["status"] == "fixed" and cves["CVE-A"]["fixed_by_run"] == "D1"
    assert cves["CVE-A"]["mttr_s"] == 21 * 86400 + 10.5 * 3600
    assert cves["CVE-B"] == {**cves["CVE-B"], "status": "open", "age_s": 7 * 86400.0}
    # no feed date for CVE-C: first seen when the first run named it
    assert cves["CVE-C"]["first_seen"] == "2026-11-22T08:00:00.000000Z" and cves["CVE-C"]["age_s"] == 40 * 3600.0
    assert m["mttr"]["open"] == ["CVE-B", "CVE-C"] and m["mttr"]["mean_s"] == cves["CVE-A"]["mttr_s"]
    ttr = {r["run"]: r for r in m["time_to_restore"]}
    assert ttr["D2"]["time_to_restore_s"] == 900.0 and ttr["D2"]["restored_by_run"] == "D2"
    assert ttr["D4"]["time_to_restore_s"] == 1800.0 and ttr["D4"]["restored_by_run"] == "R1"
    assert m["mean_time_to_restore_s"] == 1350.0


def test_unrestored_failure_has_no_time_to_restore_yet(tmp_path):
    path = tmp_path / "a.jsonl"
    append(str(path), [
        opened("F", "2026-11-23T00:00:00.000000Z", "rolling_patch.yml", component="wallet-signer"),
        event("F", "2026-11-23T01:00:00.000000Z", "runner_on_failed"),
        closed("F", "2026-11-23T00:00:00.000000Z", "2026-11-23T01:10:00.000000Z", "halted"),
    ])
    m = metrics(group_runs(read_records(str(path))), now=NOW)
    assert m["change_failure_rate"] == 1.0
    assert m["time_to_restore"][0]["time_to_restore_s"] is None
    assert m["time_to_restore"][0]["unrestored_for_s"] == 23 * 3600.0
    assert m["mean_time_to_restore_s"] is None


def test_empty_trail_has_no_rates():
    m = metrics([], now=NOW)
    assert (m["deployments"], m["change_failure_rate"], m["mttr"]["per_cve"]) == (0, None, [])


def test_reused_run_id_starts_a_new_run_and_find_run_picks_by_prefix(tmp_path):
    path = tmp_path / "a.jsonl"
    append(str(path), [
        opened("job-1", "2026-11-20T00:00:00.000000Z", "rolling_patch.yml"),
        closed("job-1", "2026-11-20T00:00:00.000000Z", "2026-11-20T00:01:00.000000Z", "successful"),
        opened("job-1", "2026-11-20T01:00:00.000000Z", "rollback.yml"),
        closed("job-1", "2026-11-20T01:00:00.000000Z", "2026-11-20T01:01:00.000000Z", "successful"),
    ])
    runs = group_runs(read_records(str(path)))
    assert [r.run for r in runs] == ["job-1", "job-1#2"]
    assert find_run(runs, "job-1#2").playbook == "rollback.yml"
    assert find_run(runs, None).run == "job-1#2"
    with pytest.raises(LookupError, match="no run 'nope'"):
        find_run(runs, "nope")


# --- Prometheus -----------------------------------------------------------------------------

def test_prometheus_text_has_help_type_and_escaped_labels(tmp_path):
    path = tmp_path / "a.jsonl"
    hand_trail(path)
    m = metrics(group_runs(read_records(str(path))), now=NOW)
    m["mttr"]["per_cve"][0]["patch_id"] = 'odd"id\\with\nnewline'
    text = prometheus(m)
    assert text.endswith("\n")
    assert "# TYPE exchpatch_deployments_total counter\nexchpatch_deployments_total 4\n" in text
    assert "exchpatch_change_failure_rate 0.5\n" in text
    assert ('exchpatch_cve_time_to_remediate_seconds{cve="CVE-A",patch_id="odd\\"id\\\\with\\nnewline"} '
            '1852200.0') in text
    assert 'exchpatch_cve_open_age_seconds{cve="CVE-B"} 604800.0' in text
    assert 'exchpatch_runs_total{playbook="rolling_patch.yml",outcome="interrupted"} 1' in text
    names = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            names.add(line.split()[2])
        elif line.startswith("# TYPE "):
            assert line.split()[2] in names and line.split()[3] in ("counter", "gauge")
        else:
            metric = line.split("{")[0].split(" ")[0]
            assert metric.startswith("exchpatch_") and metric in names
            float(line.rsplit(" ", 1)[1])


def test_parse_ts_accepts_dates_and_z():
    assert parse_ts("2026-10-30") == dt.datetime(2026, 10, 30, tzinfo=dt.UTC)
    assert parse_ts("2026-10-30T01:02:03.5Z").second == 3


# --- the keyed chain (HMAC-SHA256) -------------------------------------------------------------

KEY = b"0123456789abcdef-audit-key"


def keyed_trail(path: Path, key: bytes | None = KEY, n: int = 4) -> list[dict]:
    from ansible_collections.exchangeops.patching.plugins.module_utils._audit import append as append_keyed
    return append_keyed(str(path), [rec("r1", "event", f"2026-11-24T10:00:0{i}Z", event="runner_on_ok", n=i)
                                    for i in range(n)], key=key)


def verification(path: Path, key: bytes | None):
    from ansible_collections.exchangeops.patching.plugins.module_utils._audit import FileTrail
    return FileTrail(str(path), key).verify()


def test_keyed_trail_verifies_only_with_its_key(tmp_path):
    path = tmp_path / "audit.jsonl"
    written = keyed_trail(path)
    assert {r["mac"] for r in written} == {"hmac-sha256"} and written[0]["v"] == 2
    v = verification(path, KEY)
    assert v.status == "verified" and v.keyed == 4 and not v.problems
    # without a key: links consistent, never reported as a verified keyed trail
    v = verification(path, None)
    assert v.status == "unkeyed" and v.unchecked == 4 and v.ok and "not a verification" in v.summary()
    # a wrong key fails every record
    v = verification(path, b"another-key-of-16-bytes")
    assert v.status == "broken" and [p.line for p in v.problems] == [1, 2, 3, 4]


def _recompute_without_key(path: Path, edit_line: int, flip_mac: bool) -> None:
    from ansible_collections.exchangeops.patching.plugins.module_utils._audit import link
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[edit_line - 1]["n"] = 42
    prev = records[edit_line - 2]["hash"] if edit_line > 1 else GENESIS
    for r in records[edit_line - 1:]:
        r["prev"] = prev
        if flip_mac:
            r["mac"] = "sha256"
        r["hash"] = prev = (link(r) if flip_mac else record_hash(r))
    path.write_text("".join(canonical(r) + "\n" for r in records))


@pytest.mark.parametrize("flip_mac", [False, True])
def test_a_chain_recomputed_without_the_key_is_named(tmp_path, flip_mac):
    path = tmp_path / "audit.jsonl"
    keyed_trail(path)
    _recompute_without_key(path, 3, flip_mac)
    v = verification(path, KEY)
    assert v.status == "broken"
    if flip_mac:
        assert (v.problems[0].line, v.problems[0].seq) == (3, 3) and "plain sha256 after keyed" in v.problems[0].what
    else:
        assert v.problems[0].line == 3 and "HMAC does not match" in v.problems[0].what


def test_unkeyed_prefix_is_sealed_by_the_first_keyed_record_and_a_plain_tail_is_named(tmp_path):
    path = tmp_path / "audit.jsonl"
    keyed_trail(path, key=None, n=2)          # before the key was configured
    keyed_trail(path, key=KEY, n=2)
    v = verification(path, KEY)
    assert v.status == "verified" and (v.unkeyed, v.keyed) == (2, 2) and "before the key" in v.summary()
    keyed_trail(path, key=None, n=1)          # a writer without the key
    v = verification(path, KEY)
    assert [(p.line, "plain sha256 after keyed" in p.what) for p in v.problems] == [(5, True)]


def test_v1_records_verify_as_plain_sha256(tmp_path):
    path = tmp_path / "audit.jsonl"
    first = {"v": 1, "seq": 1, "ts": "2026-11-24T10:00:00Z", "run": "r", "kind": "event", "event": "x",
             "prev": GENESIS}
    first["hash"] = record_hash(first)
    path.write_text(canonical(first) + "\n")
    v = verification(path, None)
    assert v.status == "unkeyed" and v.unkeyed == 1 and "UNKEYED TRAIL" in v.summary()


def test_key_file_must_be_private_and_long_enough(tmp_path):
    from ansible_collections.exchangeops.patching.plugins.module_utils._audit import AuditError, load_key
    keyfile = tmp_path / "audit.key"
    keyfile.write_text("s3cret-key-material-0123\n")
    keyfile.chmod(0o440)
    with pytest.raises(AuditError, match="chmod 400") as err:
        load_key(key_file=str(keyfile))
    assert "s3cret" not in str(err.value)
    keyfile.chmod(0o400)
    assert load_key(environ={"EXCHPATCH_AUDIT_KEY_FILE": str(keyfile)}) == b"s3cret-key-material-0123"
    assert load_key("inventory-key-0123456789", str(keyfile)) == b"inventory-key-0123456789"
    assert load_key(environ={}) is None
    with pytest.raises(AuditError, match="shorter than 16"):
        load_key("short")


# --- the one merge of the change record --------------------------------------------------------

def test_merge_change_null_never_overwrites_and_is_shared_by_runs_and_report():
    from ansible_collections.exchangeops.patching.plugins.module_utils._changes import merge_change
    records = [rec("r1", "change_opened", "2026-11-24T10:00:00Z", playbook="rolling_patch.yml", operator="alice",
                   check_mode=False, patch_id="ME-1", v=2, seq=1, prev=GENESIS, mac="sha256", hash="h"),
               rec("r1", "change_updated", "2026-11-24T10:01:00Z", change={"version": "1.4.3", "rolled_back": None}),
               rec("r1", "change_updated", "2026-11-24T10:02:00Z", change={"version": None, "component": "x"}),
               rec("r1", "change_closed", "2026-11-24T10:03:00Z", outcome="successful", started=None,
                   finished="2026-11-24T10:03:00Z")]
    merged = merge_change(records, {"patch_id": None, "note": "kept"})
    assert merged["version"] == "1.4.3" and merged["patch_id"] == "ME-1"      # null never overwrites
    assert "rolled_back" in merged and merged["rolled_back"] is None           # said unknown, not absent
    assert merged["started"] == "2026-11-24T10:00:00Z" and merged["outcome"] == "successful"
    assert not {"v", "seq", "prev", "mac", "hash", "kind", "ts"} & set(merged)
    runs = group_runs(records)
    assert {k: runs[0].change[k] for k in ("version", "patch_id", "outcome", "started")} == \
        {k: merged[k] for k in ("version", "patch_id", "outcome", "started")}


def test_inconclusive_runs_are_counted_on_their_own_not_as_failed_changes(tmp_path):
    # a rollout halted because a traffic gate had too few client requests, and a rollback that went on
    # past an inconclusive gate (rollback_on_inconclusive=proceed): neither is a failed change, both show
    path = tmp_path / "a.jsonl"
    gate = {"node": "match-0b", "checks": ["p99"], "policy": "halt", "msg": "12 client requests < minimum 50"}
    append(str(path), [
        opened("H", "2026-11-23T00:00:00.000000Z", "rolling_patch.yml", patch_id="me-1.5.0"),
        rec("H", "change_updated", "2026-11-23T00:05:00.000000Z",
            change={"inconclusive_gates": [gate], "halted": True, "stopped": {"reason": "inconclusive"},
                    "next_step": "Halted for a human"}),
        closed("H", "2026-11-23T00:00:00.000000Z", "2026-11-23T00:06:00.000000Z", "inconclusive"),
        opened("D", "2026-11-23T01:00:00.000000Z", "rolling_patch.yml", patch_id="me-1.5.0"),
        closed("D", "2026-11-23T01:00:00.000000Z", "2026-11-23T01:06:00.000000Z", "successful"),
        opened("R", "2026-11-23T02:00:00.000000Z", "rollback.yml", component="matching-engine"),
        rec("R", "change_updated", "2026-11-23T02:05:00.000000Z",
            change={"inconclusive_gates": [{**gate, "policy": "proceed"}, {**gate, "node": "match-1b"}]}),
        closed("R", "2026-11-23T02:00:00.000000Z", "2026-11-23T02:06:00.000000Z", "successful"),
    ])
    runs = group_runs(read_records(str(path)))
    rows = {r["run"]: r for r in history(runs)}
    assert rows["H"]["outcome"] == "inconclusive"
    m = metrics(runs, now=NOW)
    assert (m["deployments"], m["failed_deployments"], m["change_failure_rate"]) == (2, 0, 0.0)
    assert m["inconclusive_deployments"] == 1
    assert m["inconclusive_gates"] == {"rolling_patch.yml": 1, "rollback.yml": 2}
    assert m["time_to_restore"] == []  # nothing failed, nothing to restore
    text = prometheus(m)
    assert "exchpatch_inconclusive_deployments_total 1\n" in text
    assert 'exchpatch_inconclusive_gates_total{playbook="rollback.yml"} 2\n' in text
    assert 'exchpatch_runs_total{playbook="rolling_patch.yml",outcome="inconclusive"} 1\n' in text
