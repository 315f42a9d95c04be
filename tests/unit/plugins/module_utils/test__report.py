# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rollout report, on records of two real rolling_patch runs on the testbed.

fixtures/report_good.json and fixtures/report_crash.json were captured from real runs (a good
matching-engine release, then one that crashes on start) under client load, through
ansible_runner.run, and converted to audit records by ``records_from_runner_events`` below.
Regenerate them with ``python tests/unit/plugins/module_utils/test__report.py OUT_DIR`` (starts a
testbed on net 67, takes about two minutes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.exchangeops.patching.plugins.module_utils._report import render_html
from ansible_collections.exchangeops.patching.plugins.module_utils._report_timeline import (
    PHASE_PATTERNS,
    PHASES,
    phase_of,
)

FIXTURES = Path(__file__).parent / "fixtures"
HOSTILE = "<script>alert(\"x\")</script> & 'quoted' \"double\""

# --------------------------------------------------------------------------- runner events -> audit records

KEPT_EVENTS = ("playbook_on_play_start", "playbook_on_task_start", "playbook_on_handler_task_start",
               "runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped",
               "runner_item_on_ok", "runner_item_on_failed", "runner_item_on_skipped", "playbook_on_stats")
SECRET_KEY = re.compile(r"token|password|passwd|secret|private_key|authorization|api_key|vault", re.IGNORECASE)
RES_KEYS = ("msg", "changed", "failed", "rc", "skip_reason", "unreachable", "passed", "gates", "checks", "polls",
            "elapsed", "window", "baseline", "node", "item", "results", "ansible_facts")
TRIM_LIMIT = 2000  # as the audit callback: strings cut at 2000 characters, lists/dicts over 8000 summarised


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: "<redacted>" if SECRET_KEY.search(k) else _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, str):
        for s in secrets:
            value = value.replace(s, "<redacted>")
    return value


def _trim(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= TRIM_LIMIT else value[:TRIM_LIMIT] + f"... <{len(value) - TRIM_LIMIT} more>"
    if isinstance(value, (dict, list)):
        size = len(json.dumps(value, default=str))
        if size > TRIM_LIMIT * 4:
            return f"<{len(value)} {'items' if isinstance(value, list) else 'keys'}, {size} characters, trimmed>"
        return {k: _trim(v) for k, v in value.items()} if isinstance(value, dict) else [_trim(v) for v in value]
    return value


def trim_res(res: Any, item_event: bool = False) -> Any:
    """The contract's trimmed result (msg, changed, failed, rc, skip_reason and small module keys), in the
    shape the audit callback writes: large values summarised, facts by name only, loop items labelled."""
    if not isinstance(res, dict):
        return {}
    out = {key: _trim(res[key]) for key in RES_KEYS if key in res}
    if isinstance(res.get("ansible_facts"), dict):
        out["ansible_facts"] = sorted(res["ansible_facts"])
    if item_event:
        out["item"] = _trim(res.get("_ansible_item_label", res.get(res.get("ansible_loop_var", "item"))))
    if isinstance(out.get("node"), dict):
        # the node's full status is small enough to keep, but the fixture needs only what the report reads
        out["node"] = {k: v for k, v in out["node"].items() if k in (
            "name", "component", "version", "ha_role", "ready", "ready_reason", "shard", "seq")}
    return out


def _iso(created: str) -> str:
    return created.replace("+00:00", "Z") if created.endswith("+00:00") else created


def records_from_runner_events(events: list[dict], run: str, opened: dict, updated: dict, closed: dict,
                               secrets: list[str]) -> list[dict]:
    """ansible-runner job events -> hash-chained audit records (change_opened, events, change_updated,
    change_closed), redacted as the contract says."""
    records: list[dict] = []

    def add(kind: str, ts: str, **body: Any) -> None:
        rec = {"v": 1, "seq": len(records) + 1, "ts": ts, "run": run, "kind": kind,
               "prev": records[-1]["hash"] if records else "0" * 64, **_redact(body, secrets)}
        rec["hash"] = hashlib.sha256(json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        records.append(rec)

    kept = [e for e in events if e.get("event") in KEPT_EVENTS]
    add("change_opened", _iso(kept[0]["created"]), **opened)
    for ev in kept:
        data = ev.get("event_data", {})
        res = trim_res(data.get("res"), item_event=ev["event"].startswith("runner_item"))
        add("event", _iso(ev["created"]), event=ev["event"], play=data.get("play"), task=data.get("task"),
            host=data.get("host"), changed=res.get("changed") if res else None, res=res,
            duration_s=data.get("duration"))
        if data.get("task", "").startswith("Show the plan") and ev["event"] == "runner_on_ok":
            add("change_updated", _iso(ev["created"]), change=updated)
    add("change_closed", _iso(kept[-1]["created"]), **closed)
    return records


def fixture_from_run(name: str, pid: str, version: str, fixes: list[str], before: list[str], extra: dict,
                     events: list[dict], load: dict | None, secrets: list[str]) -> dict[str, Any]:
    """One captured rolling_patch run as {change, records, load}, checked free of admin tokens."""
    fail = next((e["event_data"]["res"].get("msg", "") for e in events if e["event"] == "runner_on_failed"
                 and e["event_data"].get("task") == "Fail the run with the gate's evidence"), "")
    ok = not any(e["event"] in ("runner_on_failed", "runner_on_unreachable") and e["event_data"].get("host") ==
                 "localhost" for e in events)
    outcome = "successful" if ok else ("rolled_back" if "Rolled back" in fail else "failed")
    failed = sorted({e["event_data"]["host"] for e in events if e["event"] == "runner_on_failed"
                     and e["event_data"].get("host") != "localhost"})
    stats = next(e["event_data"] for e in events if e["event"] == "playbook_on_stats")
    opened = {"playbook": "rolling_patch.yml", "operator": "ops@controller", "approver": None, "reason": None,
              "emergency": False, "patch_id": pid, "component": "matching-engine", "check_mode": False,
              "extra_vars": {"patch_id": pid, **extra}}
    updated: dict[str, Any] = {"version": version, "cves": fixes, "previous_versions": before}
    if outcome == "rolled_back":
        updated |= {"rolled_back": True, "failed_nodes": failed, "rolled_back_nodes": failed}
    closed = {"outcome": outcome, "started": _iso(events[0]["created"]), "finished": _iso(events[-1]["created"]),
              "stats": {k: stats.get(k, {}) for k in ("ok", "changed", "failures", "dark", "skipped")}}
    records = records_from_runner_events(events, f"capture-{name}", opened, updated, closed, secrets)
    change = {**opened, **updated, **{k: v for k, v in closed.items() if k != "stats"}}
    fixture = {"change": change, "records": records, "load": load}
    text = json.dumps(fixture)
    assert not any(s in text for s in secrets), "an admin token reached the fixture"
    return fixture


def dump_fixture(fixture: dict[str, Any]) -> str:
    """JSON with one record per line, so a diff of a regenerated fixture stays readable."""
    records = ",\n  ".join(json.dumps(r, sort_keys=True, separators=(",", ":")) for r in fixture["records"])
    return (f'{{"change": {json.dumps(fixture["change"], sort_keys=True)},\n "load": '
            f'{json.dumps(fixture["load"], sort_keys=True)},\n "records": [\n  {records}\n]}}\n')


def _load_into(run_load, target, stop, box: dict[str, Any]) -> None:  # pragma: no cover
    box["report"] = run_load(target, 60, 600, stop=stop).as_json()


def capture(out_dir: Path) -> None:  # pragma: no cover - regenerates the fixtures on a live testbed
    """Run a good and a crashing release through rolling_patch.yml on a testbed (net 67) under load."""
    import os
    import shutil
    import tempfile
    import threading
    import time

    import ansible_runner

    from testbed import fleet as tb
    from testbed.loadgen import LoadTarget, run_load
    from testbed.release import build_release

    repo = Path(__file__).resolve().parents[4]
    work = Path(tempfile.mkdtemp(prefix="report-capture-"))
    f = tb.up(work / "fleet", shards=2, wallets=2, net=67)
    try:
        secrets = sorted({n.token() for n in f.nodes})
        for name, version, fault, extra in (("good", "1.4.3", None, {"rolling_canary_bake": 3}),
                                            ("crash", "1.4.4", "crash",
                                             {"rolling_canary_bake": 4, "matching_node_gate_timeout": 20})):
            before = sorted({tb.node_status(n).get("version") for n in f.nodes if n.component == "matching-engine"})
            fixes = ["CVE-2026-31337"] if fault is None else []
            pid = build_release(work / "fleet" / "releases", work / "fleet" / "keys", work / "fleet" / "catalog",
                                "matching-engine", version, fault=fault, fixes=fixes).id
            target = LoadTarget(f.frontend_url, f.markets(), f.chains(),
                                [(n.url, n.token()) for n in f.nodes if n.component == "wallet-signer"])
            stop = threading.Event()
            box: dict[str, Any] = {}
            t = threading.Thread(target=_load_into, args=(run_load, target, stop, box))
            t.start()
            time.sleep(2)
            pdd = work / f"pdd-{name}"
            pdd.mkdir(mode=0o700)
            r = ansible_runner.run(private_data_dir=str(pdd), project_dir=str(repo),
                                   playbook="playbooks/rolling_patch.yml", inventory=f.inventory_dir,
                                   extravars={"patch_id": pid, **extra}, ident=name, quiet=True,
                                   envvars={"ANSIBLE_CONFIG": str(repo / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                                            "PATH": str(Path(sys.executable).parent) + ":" + os.environ["PATH"]})
            time.sleep(2)
            stop.set()
            t.join(timeout=120)
            fixture = fixture_from_run(name, pid, version, fixes, before, extra, list(r.events), box.get("report"),
                                       secrets)
            (out_dir / f"report_{name}.json").write_text(dump_fixture(fixture))
    finally:
        tb.down(work / "fleet")
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- parsing the HTML


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Element | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Element] = []
        self.own_text = ""

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    @property
    def text(self) -> str:
        return self.own_text + "".join(c.text for c in self.children)

    def ancestors(self) -> list[Element]:
        out, el = [], self.parent
        while el is not None:
            out.append(el)
            el = el.parent
        return out

    def descendants(self) -> list[Element]:
        out = []
        for c in self.children:
            out += [c, *c.descendants()]
        return out


class Page(HTMLParser):
    """The document as a tree; fails on elements left open or closed out of order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {}, None)
        self.current = self.root
        self.elements: list[Element] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(el)
        self.elements.append(el)
        if tag not in VOID:
            self.current = el

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(el)
        self.elements.append(el)

    def handle_endtag(self, tag: str) -> None:
        if self.current.tag != tag:
            self.errors.append(f"</{tag}> closes <{self.current.tag}>")
            return
        self.current = self.current.parent or self.root

    def handle_data(self, data: str) -> None:
        self.current.own_text += data

    def find(self, tag: str, cls: str | None = None) -> list[Element]:
        return [e for e in self.elements if e.tag == tag and (cls is None or cls in e.classes)]


def parse(doc: str) -> Page:
    page = Page()
    page.feed(doc)
    page.close()
    assert not page.errors, page.errors[:5]
    assert page.current is page.root, f"unclosed <{page.current.tag}>"
    return page


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"report_{name}.json").read_text())


def lanes(page: Page) -> dict[str, Element]:
    return {e.attrs["data-host"]: e for e in page.find("g", "lane")}


def in_lane(page: Page, host: str, tag: str, cls: str) -> list[Element]:
    """Elements <tag class=cls> inside the lane of ``host``."""
    return [e for e in lanes(page)[host].descendants() if e.tag == tag and cls in e.classes]


def titles_under(el: Element) -> list[str]:
    return [d.text for d in el.descendants() if d.tag == "title"]


def row_of(cell: Element) -> list[str]:
    assert cell.parent is not None
    return [c.text for c in cell.parent.children]


def touched_hosts(records: list[dict]) -> set[str]:
    return {r["host"] for r in records if r["kind"] == "event" and r.get("host")
            and r["event"] in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable")}


@pytest.fixture(scope="module", params=["good", "crash"])
def run(request) -> dict[str, Any]:
    fx = load_fixture(request.param)
    fx["name"] = request.param
    fx["html"] = render_html(fx["change"], fx["records"], fx["load"])
    fx["page"] = parse(fx["html"])
    return fx


# --------------------------------------------------------------------------- the fixtures themselves


def _secret_keys_redacted(value: Any) -> bool:
    if isinstance(value, dict):
        return all((v == "<redacted>" if SECRET_KEY.search(k) else _secret_keys_redacted(v)) for k, v in value.items())
    if isinstance(value, list):
        return all(_secret_keys_redacted(v) for v in value)
    return True


@pytest.mark.parametrize("name", ["good", "crash"])
def test_fixtures_are_real_runs_without_secrets(name):
    fx = load_fixture(name)
    text = json.dumps(fx)
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" not in text and "Bearer" not in text
    assert _secret_keys_redacted(fx)
    kinds = [r["kind"] for r in fx["records"]]
    assert kinds[0] == "change_opened" and kinds[-1] == "change_closed" and "event" in kinds
    assert [r["seq"] for r in fx["records"]] == list(range(1, len(kinds) + 1))
    # the hash chain of the contract holds
    prev = "0" * 64
    for rec in fx["records"]:
        body = {k: v for k, v in rec.items() if k != "hash"}
        assert rec["prev"] == prev
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        assert rec["hash"] == hashlib.sha256(canonical).hexdigest()
        prev = rec["hash"]


# --------------------------------------------------------------------------- the report


def test_the_page_is_one_self_contained_document(run):
    doc, page = run["html"], run["page"]
    assert doc.startswith("<!DOCTYPE html>")
    assert len(page.find("svg")) == 1 and len(page.find("style")) == 1 and page.find("title")[0].parent.tag == "head"
    assert not page.find("script") and not page.find("link") and not page.find("img") and not page.find("iframe")
    assert not re.search(r"""(src|href|xlink:href)\s*=\s*["']?\s*(https?:)?//""", doc, re.IGNORECASE)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", doc, re.IGNORECASE)


def test_one_lane_per_host_that_ran_a_task(run):
    page = run["page"]
    assert set(lanes(page)) == touched_hosts(run["records"])
    # every patched matching node has drain, switch, restart and gate segments in its own lane
    patched = {r["host"] for r in run["records"] if r["kind"] == "event" and (r.get("task") or "").startswith(
        "Mark the node as switched") and r["event"] == "runner_on_ok"}
    assert patched, "the fixture has patched nodes"
    for host in patched:
        for phase in ("drain", "switch", "restart", "gate"):
            assert in_lane(page, host, "rect", f"phase-{phase}"), (host, phase)


def test_the_good_run_is_green_and_converged():
    fx = load_fixture("good")
    doc = render_html(fx["change"], fx["records"], fx["load"])
    page = parse(doc)
    badge = page.find("div", "badge")
    assert len(badge) == 1 and "outcome-successful" in badge[0].classes and badge[0].text == "successful"
    assert not page.find("g", "failure")
    assert "No task failed." in doc
    # the primaries switched over; the versions table shows every matching node going 1.4.2 -> 1.4.3
    assert in_lane(page, "match-0a", "rect", "phase-switchover")
    versions = {row_of(td)[0]: row_of(td) for td in page.find("td") if td.parent and "version-row" in td.parent.classes}
    for node in ("match-0a", "match-0b", "match-1a", "match-1b"):
        assert versions[node][1:3] == ["1.4.2", "1.4.3"], versions[node]
    assert "1.4.2 → 1.4.3" in doc and "CVE-2026-31337" in doc


def test_versions_come_from_loop_items_when_the_loop_result_was_trimmed():
    fx = load_fixture("good")
    records = copy.deepcopy(fx["records"])
    for r in records:
        if isinstance(r.get("res"), dict) and "results" in r["res"]:
            r["res"]["results"] = "<6 items, 9000 characters, trimmed>"
    page = parse(render_html(fx["change"], records, None))
    versions = {row_of(td)[0]: row_of(td) for td in page.find("td") if td.parent and "version-row" in td.parent.classes}
    assert {n: v[1:3] for n, v in versions.items() if n.startswith("match-")} == {
        n: ["1.4.2", "1.4.3"] for n in ("match-0a", "match-0b", "match-1a", "match-1b")}
    wallets = {n: v[2] for n, v in versions.items() if n.startswith("wallet-")}
    assert wallets == {"wallet-1": "2.3.0", "wallet-2": "2.3.0"}


def test_the_crash_run_marks_the_canary_failed_with_the_gates_message_and_is_rolled_back():
    fx = load_fixture("crash")
    failed = [r for r in fx["records"] if r["kind"] == "event" and r["event"] == "runner_on_failed"
              and r["host"] != "localhost"]
    assert len(failed) == 1 and failed[0]["task"] == "Check the matching node's health gates"
    canary, msg = failed[0]["host"], failed[0]["res"]["msg"]
    ready = next(g for g in failed[0]["res"]["gates"] if g["name"] == "ready")
    assert "health gate failed" in msg and f"ready: {ready['evidence']}" in msg
    page = parse(render_html(fx["change"], fx["records"], fx["load"]))
    marks = in_lane(page, canary, "g", "failure")
    assert len(marks) == 1
    assert any(msg in t for t in titles_under(marks[0]))
    for host in set(lanes(page)) - {canary, "localhost"}:
        assert not in_lane(page, host, "g", "failure"), host
    badge = page.find("div", "badge")
    assert len(badge) == 1 and "outcome-rolled_back" in badge[0].classes and badge[0].text == "rolled back"
    # the canary's rollback is a band on its lane; the gate table shows the failing check with its evidence
    assert in_lane(page, canary, "rect", "rollback-band")
    ready_rows = [row_of(td) for td in page.find("td") if td.text == "ready" and row_of(td)[-2:-1] == ["fail"]]
    assert ready_rows and ready_rows[0][-1] == ready["evidence"]


def test_the_load_section_shows_nothing_lost_as_pass(run):
    page = run["page"]
    table = page.find("table", "load-checks")
    assert len(table) == 1
    rows = {tr.children[0].text: [c.text for c in tr.children[1:]] for tr in table[0].children}
    assert rows["orders lost"] == ["0", "PASS"]
    assert rows["orders duplicated"] == ["0", "PASS"]
    assert rows["withdrawals processed twice"] == ["0", "PASS"]
    assert rows["ledger balanced"] == ["yes", "PASS"]
    unavailable = {row_of(td)[0]: row_of(td)[1] for td in page.find("td")
                   if td.parent and "unavailable-row" in td.parent.classes}
    expected = run["load"]["max_unavailable_ms"] | run["load"]["max_unavailable_ms_chains"]
    assert unavailable == {k: str(v) for k, v in expected.items()}


def test_a_load_report_that_lost_orders_fails_and_missing_fields_are_not_passes():
    fx = load_fixture("good")
    bad = {**fx["load"], "lost": 3, "ledger_balanced": False}
    del bad["duplicated"]
    doc = render_html(fx["change"], fx["records"], bad)
    assert re.search(r"<th>orders lost</th><td>3</td><td class=\"fail\">FAIL", doc)
    assert re.search(r"<th>ledger balanced</th><td>no</td><td class=\"fail\">FAIL", doc)
    assert re.search(r"<th>orders duplicated</th><td>not reported</td><td class=\"unknown\">unknown", doc)
    assert "Client load" not in render_html(fx["change"], fx["records"], None)


def test_hostile_strings_are_escaped():
    fx = load_fixture("crash")
    records = copy.deepcopy(fx["records"])
    for r in records:
        if r["kind"] == "event" and r["event"] == "runner_on_failed" and r["host"] != "localhost":
            r["task"] = HOSTILE
            r["res"]["msg"] = HOSTILE
            r["res"]["gates"][0]["evidence"] = HOSTILE
            r["host"] = HOSTILE
    change = {**fx["change"], "operator": HOSTILE, "reason": HOSTILE, "cves": [HOSTILE], "outcome": HOSTILE}
    load = {**fx["load"], "max_unavailable_ms": {HOSTILE: 5}}
    doc = render_html(change, records, load)
    page = parse(doc)
    assert "<script" not in doc.lower() and not page.find("script")
    # the text survives intact, as text: in a tooltip, in table cells, in the lane's attribute
    assert any(HOSTILE in t.text for t in page.find("title"))
    assert [td for td in page.find("td") if td.text == HOSTILE]
    assert HOSTILE in lanes(page)
    # no attribute was broken open by the quotes
    for el in page.elements:
        assert all(re.fullmatch(r"[a-z][a-z0-9-]*", name) for name in el.attrs), el.attrs


def test_a_run_without_events_says_so():
    page = parse(render_html({"playbook": "rolling_patch.yml", "patch_id": "matching-engine-9.9.9"}, [], None))
    empty = page.find("div", "no-events")
    assert len(empty) == 1 and "No events recorded" in empty[0].text
    assert not page.find("svg")
    badge = page.find("div", "badge")
    assert "outcome-interrupted" in badge[0].classes and badge[0].text == "interrupted"


def test_an_interrupted_run_is_interrupted_not_successful():
    fx = load_fixture("good")
    cut = [r for r in fx["records"] if r["kind"] != "change_closed"][: len(fx["records"]) // 2]
    change = {k: v for k, v in fx["change"].items() if k not in ("outcome", "finished")}
    doc = render_html(change, cut, None)
    page = parse(doc)
    assert "outcome-interrupted" in page.find("div", "badge")[0].classes
    assert "not recorded (interrupted)" in doc
    assert page.find("svg")


def test_unreachable_host_and_missing_fields_are_drawn_as_failures():
    records = [
        {"kind": "event", "event": "playbook_on_task_start", "task": "Drain the node from the shard's HAProxy backend",
         "ts": "2026-11-24T13:50:00.000000Z"},
        {"kind": "event", "event": "runner_on_unreachable", "task": "Drain the node from the shard's HAProxy backend",
         "host": "match-9z", "ts": "2026-11-24T13:50:04.000000Z", "res": {"msg": "ssh: connection refused"}},
        {"kind": "event", "event": "runner_on_ok", "task": "Some unknown task", "host": "match-9y",
         "ts": "not a time"},
        {"kind": "event", "event": "runner_on_ok", "host": "match-9x", "ts": "2026-11-24T13:50:05.000000Z",
         "res": "not a dict"},
        "not a record",
    ]
    page = parse(render_html({}, records))  # type: ignore[list-item]
    assert set(lanes(page)) == {"match-9z", "match-9x"}
    marks = in_lane(page, "match-9z", "g", "failure")
    assert len(marks) == 1 and any("ssh: connection refused" in t for t in titles_under(marks[0]))
    assert in_lane(page, "match-9z", "rect", "phase-drain")
    assert in_lane(page, "match-9x", "rect", "phase-other")
    assert "outcome-interrupted" in page.find("div", "badge")[0].classes


@pytest.mark.parametrize(("task", "phase"), [
    ("Drain the node from the shard's HAProxy backend", "drain"),
    ("Drain the node from the wallet HAProxy backend", "drain"),
    ("Pause withdrawals for the node's chains", "drain"),
    ("Wait for in-flight signing to finish", "drain"),
    ("Set the market mode to cancel_only", "drain"),
    ("Stage the release artifact on the node", "switch"),
    ("Unpack the release beside the current one and switch to it", "switch"),
    ("Mark the node as switched to the new release", "switch"),
    ("Restart the matching-engine service", "restart"),
    ("Restart the wallet-signer systemd unit", "restart"),
    ("Step the primary down", "switchover"),
    ("Promote the patched standby", "switchover"),
    ("Wait until the promoted node serves as a ready primary", "switchover"),
    ("Check the matching node's health gates", "gate"),
    ("Check the wallet node's health gates", "gate"),
    ("Gate the promoted node under client traffic", "gate"),
    ("Gate the wallet node under client traffic", "gate"),
    ("Resume withdrawals on the wallet node", "resume"),
    ("Return the matching node to HAProxy", "resume"),
    ("Return the wallet node to HAProxy", "resume"),
    ("Sample error rate and p99 latency before the rollout", "baseline"),
    ("Read every node's live version", "verify"),
    ("Check that every node answered and the component converged", "verify"),
    ("Queue standbys first, then primaries, for the rollback", "rollback"),
    ("Roll the matching node back", "rollback"),
    ("Verify the artifact's sha256 and signature before any node is touched", "preflight"),
    ("Take the rollout lock for every shard or chain of the component", "preflight"),
    ("Do something nobody mapped", "other"),
    (None, "other"),
])
def test_task_names_map_to_phases(task, phase):
    assert phase_of(task) == phase


def test_every_phase_in_the_table_has_a_colour_and_a_legend_entry():
    names = {p.name for p in PHASES}
    assert {phase for pattern, phase in PHASE_PATTERNS} <= names and "other" in names
    fx = load_fixture("good")
    doc = render_html(fx["change"], fx["records"], fx["load"])
    for p in PHASES:
        assert f'background:{p.colour}"></span>{p.label}<' in doc


def test_every_task_name_in_the_playbooks_maps_to_a_phase_or_is_bookkeeping():
    """A renamed playbook task must not silently fall into 'other' when it is a rollout step."""
    repo = Path(__file__).resolve().parents[4]
    names = []
    for path in [*repo.glob("playbooks/**/*.yml"), *repo.glob("roles/*/tasks/*.yml"),
                 *repo.glob("roles/*/handlers/*.yml")]:
        names += re.findall(r"^\s*-?\s*name:\s*(.+)$", path.read_text(), re.MULTILINE)
    names = [n.strip().strip("\"'") for n in names if "{{" not in n]
    steps = {n for n in names if re.search(r"\b(drain|restart|promote|step|unpack|health gate|resume)\b", n, re.I)}
    assert steps
    assert not [n for n in steps if phase_of(n) == "other"]


def test_an_inconclusive_gate_and_a_halted_run_show_as_such_with_the_shards_and_the_next_step():
    fx = load_fixture("good")
    records = copy.deepcopy(fx["records"])
    gate = next(r for r in records if r["kind"] == "event" and r["event"] == "runner_on_ok"
                and r["task"] == "Gate the promoted node under client traffic")
    gate["res"].update(outcome="inconclusive", passed=False, msg="p99: 12 client requests < minimum 50")
    for g in gate["res"]["gates"]:
        if g["name"] == "p99":
            g.update(passed=False, outcome="inconclusive", evidence="12 client requests < minimum 50")
    change = {**fx["change"], "outcome": "inconclusive",
              "inconclusive_gates": [{"node": gate["host"], "checks": ["p99"], "policy": "halt", "msg": "thin"}],
              "shard_state": ["shard 0: match-0a standby 1.4.2 ready; match-0b primary 1.4.3 ready"],
              "next_step": "Halted for a human: rerun when the market trades"}
    doc = render_html(change, records, None)
    page = parse(doc)
    assert "outcome-inconclusive" in doc
    assert [td for td in page.find("td") if td.text == "inconclusive" and "inconclusive" in td.attrs.get("class", "")]
    assert '<span class="inconclusive">inconclusive</span>' in doc
    cells = [td.text for td in page.find("td")]
    assert f"{gate['host']} (p99, policy halt)" in cells
    assert "shard 0: match-0a standby 1.4.2 ready; match-0b primary 1.4.3 ready" in cells
    assert "Halted for a human: rerun when the market trades" in cells


if __name__ == "__main__":  # pragma: no cover
    capture(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES)
