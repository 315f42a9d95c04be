# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The rollout report's HTML view: one self-contained page per run.

``render_html(change, records, load)`` takes the merged change record of one run, that run's
audit records in order (see the audit trail contract: ``event`` and ``change_*`` kinds) and,
when the load generator ran, its report (``testbed/loadgen.py`` ``LoadReport.as_json()``), and
returns one HTML document: inline CSS and SVG, no script, no external fetch, every value
escaped (task names come from playbooks, messages from nodes) and redacted again
(``_redact.redact``: secret-named keys, URL credentials, ``password=...``), so a trail written
before today's redaction rules does not leak through its report.

The model it draws (steps, phases, gates, node versions) is ``_report_timeline``; the change
record is ``_changes.merge_change`` (the same merge as the history and metrics). Runs that were
cut off (no ``change_closed`` record: outcome ``interrupted``) render as what is known, never as
success. Runs on the controller; standard library only.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ansible_collections.exchangeops.patching.plugins.module_utils._changes import merge_change
from ansible_collections.exchangeops.patching.plugins.module_utils._redact import redact
from ansible_collections.exchangeops.patching.plugins.module_utils._report_timeline import (
    CONTROLLER,
    PHASE_BY_NAME,
    PHASES,
    Timeline,
    as_number,
    as_text,
    as_time,
    read_timeline,
)

OUTCOME_COLOURS = {
    "successful": "#2b9348",
    "rolled_back": "#e76f51",
    "failed": "#c1121f",
    "halted": "#9d0208",
    "inconclusive": "#e9c46a",
    "canceled": "#6c757d",
    "check": "#1982c4",
    "refused": "#b5838d",
    "interrupted": "#6c757d",
}


# --------------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    return html.escape(as_text(value), quote=True)


def _clock(ts: float | None) -> str:
    if ts is None:
        return "unknown"
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def _when(ts: float | None) -> str:
    if ts is None:
        return "unknown"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "unknown"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _list(value: Any) -> str:
    if isinstance(value, (list, tuple, set)):
        return ", ".join(as_text(v) for v in value) if value else "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {as_text(v)}" for k, v in value.items()) if value else "none"
    return as_text(value) if value not in (None, "") else "none"


def _outcome(change: Mapping[str, Any]) -> str:
    """The recorded outcome; a run without one never closed its change record: interrupted."""
    outcome = change.get("outcome")
    if isinstance(outcome, str) and outcome:
        return outcome
    return "interrupted"


def _badge(outcome: str) -> str:
    colour = OUTCOME_COLOURS.get(outcome, "#c1121f")
    return (f'<div class="badge outcome-{_e(re.sub(r"[^a-z_]", "", outcome.lower()))}" '
            f'style="background:{colour}">{_e(outcome.replace("_", " "))}</div>')


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:24px 32px;color:#1d1d1f;
background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.head{display:flex;gap:32px;align-items:flex-start;flex-wrap:wrap}
.badge{font-size:26px;font-weight:700;color:#fff;padding:10px 22px;border-radius:8px;text-transform:uppercase;
letter-spacing:.04em;white-space:nowrap}
table{border-collapse:collapse;background:#fff;margin:4px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600}
table.facts th{width:130px}
.pass{color:#2b9348;font-weight:600}.fail{color:#c1121f;font-weight:600}.unknown{color:#6c757d;font-weight:600}.inconclusive{color:#b07d00;font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:6px 0 10px;font-size:13px}
.sw{display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:-2px;margin-right:5px}
.chart{overflow-x:auto;background:#fff;border:1px solid #ddd}
.evidence{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.empty{font-size:18px;padding:24px;background:#fff;border:1px dashed #aaa;text-align:center}
.muted{color:#6c757d}
tr.failed td{background:#fdecea}
details{margin:6px 0}
"""


# --------------------------------------------------------------------------- sections


def _header(change: Mapping[str, Any], run: Timeline, outcome: str) -> str:
    patch = change.get("patch_id") or run.plan.get("patch_id")
    component = change.get("component") or run.plan.get("component")
    version = change.get("version") or change.get("converged_version") or run.plan.get("version")
    previous = change.get("previous_versions")
    if not previous:
        befores = sorted({s.before for s in run.nodes.values() if s.before and s.before != version})
        previous = befores
    started = as_time(change.get("started")) or run.first_ts
    finished = as_time(change.get("finished")) or (run.last_ts if outcome != "interrupted" else None)
    duration = (finished - started) if started is not None and finished is not None else None
    emergency = change.get("emergency")
    rows = [
        ("patch", patch or "unknown"),
        ("component", component or "unknown"),
        ("version", f"{_list(previous) if previous else 'unknown'} → {version or 'unknown'}"),
        ("CVEs", _list(change.get("cves"))),
        ("playbook", change.get("playbook") or "unknown"),
        ("operator", change.get("operator") or "unknown"),
        ("approver", change.get("approver") or "none"),
        ("reason", change.get("reason") or "none"),
        ("emergency", "yes" if emergency is True else ("no" if emergency is False else "unknown")),
        ("run", change.get("run") or "unknown"),
    ]
    times = [
        ("started", _when(started)),
        ("finished", _when(finished) if finished is not None else "not recorded (interrupted)"),
        ("duration", _duration(duration)),
        ("failed nodes", _list(change.get("failed_nodes") if change.get("failed_nodes") is not None
                               else sorted({f.host for f in run.failures if f.host != CONTROLLER}))),
        ("rolled back", _list(change.get("rolled_back_nodes") if change.get("rolled_back_nodes") is not None
                              else sorted({s.host for s in run.steps if s.rollback and s.phase == "switch"}))),
    ]
    if change.get("check_mode"):
        times.append(("check mode", "yes: no node was changed"))
    inconclusive = change.get("inconclusive_gates")
    if isinstance(inconclusive, list) and inconclusive:
        times.append(("inconclusive gates", "; ".join(
            f"{g.get('node')} ({_list(g.get('checks'))}, policy {g.get('policy')})" for g in inconclusive
            if isinstance(g, Mapping))))
    if isinstance(change.get("shard_state"), list):
        times.append(("shards after the run", " | ".join(str(x) for x in change["shard_state"])))
    if change.get("shards_repaired"):
        times.append(("standbys promoted", _list(change.get("shards_repaired"))))
    if change.get("next_step"):
        times.append(("next step", change["next_step"]))

    def table(pairs: list[tuple[str, Any]]) -> str:
        return '<table class="facts">' + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs) + \
            "</table>"

    title = f"Rollout report: {patch or 'unknown patch'}"
    return (f"<h1>{_e(title)}</h1>"
            f'<div class="head">{_badge(outcome)}{table(rows)}{table(times)}</div>')


def _lanes(run: Timeline) -> list[str]:
    """Controller first, then nodes in the order they were first patched, then the rest."""
    first_touch: dict[str, float] = {}
    first_seen: dict[str, float] = {}
    for s in run.steps:
        first_seen.setdefault(s.host, s.start)
        if s.phase in ("drain", "switch", "restart", "switchover", "gate") and s.host not in first_touch:
            first_touch[s.host] = s.start
    hosts = [h for h in first_seen if h != CONTROLLER]
    hosts.sort(key=lambda h: (h not in first_touch, first_touch.get(h, first_seen[h]), h))
    return ([CONTROLLER] if CONTROLLER in first_seen else []) + hosts


def _ticks(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if span / step <= 12:
            return step
    return 14400


def _timeline(run: Timeline) -> str:
    lanes = _lanes(run)
    t0 = min(s.start for s in run.steps)
    t1 = max(s.end for s in run.steps)
    span = max(t1 - t0, 1.0)
    left, right, lane_h, top = 200, 120, 30, 28
    width = 1100
    plot = width - left - right
    height = top + lane_h * len(lanes) + 10

    def x(t: float) -> float:
        return left + (t - t0) / span * plot

    out = [f'<svg class="timeline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="timeline of the run, one lane per node">',
           '<defs><pattern id="rb" width="8" height="8" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="8" height="8" fill="#fde2dc"/>'
           '<rect width="3" height="8" fill="#f4a99a"/></pattern></defs>']
    tick = _ticks(span)
    t = 0.0
    while t <= span + 1e-9:
        px = x(t0 + t)
        out.append(f'<line x1="{px:.1f}" y1="{top - 6}" x2="{px:.1f}" y2="{height - 8}" stroke="#eee"/>'
                   f'<text x="{px:.1f}" y="{top - 10}" font-size="10" text-anchor="middle" fill="#666">'
                   f"+{_e(_duration(t))}</text>")
        t += tick
    for i, host in enumerate(lanes):
        y = top + i * lane_h
        steps = [s for s in run.steps if s.host == host]
        state = run.nodes.get(host)
        label = "controller" if host == CONTROLLER else host
        failed = any(s.status in ("failed", "unreachable") for s in steps)
        out.append(f'<g class="lane" data-host="{_e(host)}">')
        out.append(f'<rect x="0" y="{y}" width="{width}" height="{lane_h}" fill="{"#fff" if i % 2 else "#f7f7f7"}"/>')
        out.append(f'<text x="8" y="{y + lane_h / 2 + 4}" font-size="12" font-weight="600" '
                   f'fill="{"#c1121f" if failed else "#222"}">{_e(label)}</text>')
        rb = [s for s in steps if s.rollback]
        if rb:
            a, b = x(min(s.start for s in rb)), x(max(s.end for s in rb))
            out.append(f'<rect class="rollback-band" x="{a:.1f}" y="{y + 2}" width="{max(b - a, 3):.1f}" '
                       f'height="{lane_h - 4}" fill="url(#rb)"><title>rollback of {_e(host)}: '
                       f"{_e(_clock(min(s.start for s in rb)))}–{_e(_clock(max(s.end for s in rb)))}</title></rect>")
        for s in steps:
            phase = PHASE_BY_NAME.get(s.phase, PHASE_BY_NAME["other"])
            a, b = x(s.start), x(s.end)
            bad = s.status in ("failed", "unreachable")
            h = lane_h - 12 if s.phase != "other" else lane_h - 20
            yy = y + (lane_h - h) / 2
            where = f" (on {s.delegated_to})" if s.delegated_to and s.delegated_to != s.host else ""
            tip = (f"{s.task}{where} [{phase.label}{', rollback' if s.rollback else ''}] {s.status} "
                   f"{_clock(s.start)}–{_clock(s.end)} ({s.end - s.start:.1f}s)" + (f": {s.msg}" if s.msg else ""))
            stroke = ' stroke="#c1121f" stroke-width="2"' if bad else ""
            out.append(f'<rect class="seg phase-{phase.name}" x="{a:.1f}" y="{yy:.1f}" width="{max(b - a, 2):.1f}" '
                       f'height="{h}" rx="2" fill="{phase.colour}"{stroke}><title>{_e(tip)}</title></rect>')
            if bad:
                cx, cy = b, y + lane_h / 2
                out.append(f'<g class="failure"><title>{_e(f"FAILED {s.task}: {s.msg}")}</title>'
                           f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="7" fill="#c1121f"/>'
                           f'<path d="M{cx - 3:.1f} {cy - 3:.1f}L{cx + 3:.1f} {cy + 3:.1f}M{cx + 3:.1f} {cy - 3:.1f}'
                           f'L{cx - 3:.1f} {cy + 3:.1f}" stroke="#fff" stroke-width="2"/></g>')
        if host != CONTROLLER:
            version = state.after if state and state.after else "?"
            changed = state and state.before and state.after and state.before != state.after
            text = f"{state.before} → {version}" if changed else version
            if rb:
                text += " (rolled back)"
            colour = "#c1121f" if state and state.answered is False else "#222"
            out.append(f'<text class="version" x="{width - right + 8}" y="{y + lane_h / 2 + 4}" font-size="11" '
                       f'fill="{colour}"><title>version the node was last seen on</title>{_e(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    legend = "".join(f'<span title="{_e(p.meaning)}"><span class="sw" style="background:{p.colour}"></span>'
                     f"{_e(p.label)}</span>" for p in PHASES)
    legend += ('<span><span class="sw" style="background:#f4a99a"></span>rollback band</span>'
               '<span><span class="sw" style="background:#c1121f;border-radius:50%"></span>failure '
               "(hover for the message)</span>")
    return (f'<h2>Timeline</h2><p class="muted">{_e(_when(t0))} to {_e(_when(t1))}; one lane per host, time on x; '
            f"hover a segment for its task and timing.</p><div class=\"legend\">{legend}</div>"
            f'<div class="chart">{"".join(out)}</div>')


def _failures(run: Timeline) -> str:
    if not run.failures:
        return "<h2>Failures</h2><p class=\"pass\">No task failed.</p>"
    rows = "".join(f'<tr class="failed"><td>{_e(_clock(f.end))}</td><td>{_e(f.host)}</td><td>{_e(f.task)}</td>'
                   f"<td>{_e(f.status)}{' (rollback)' if f.rollback else ''}</td>"
                   f'<td class="evidence">{_e(f.msg)}</td></tr>' for f in run.failures)
    return ("<h2>Failures</h2><table><tr><th>time</th><th>host</th><th>task</th><th>result</th><th>message</th></tr>"
            f"{rows}</table>")


def _gates(run: Timeline) -> str:
    if not run.gates:
        return "<h2>Health gates</h2><p class=\"unknown\">No health gate ran.</p>"
    rows = []
    for g in run.gates:
        checks = g.checks or [{"name": "?", "passed": False, "evidence": g.msg or "no gate results"}]
        if g.outcome == "inconclusive":
            verdict = '<span class="inconclusive">inconclusive</span>'
        else:
            verdict = '<span class="pass">passed</span>' if g.passed else '<span class="fail">failed</span>'
        timing = " ".join(p for p in (
            f"{g.elapsed}s" if as_number(g.elapsed) is not None else "",
            f"{g.polls} polls" if as_number(g.polls) is not None else "") if p)
        span = len(checks)
        for i, c in enumerate(checks):
            ok = c.get("passed") is True
            word = "inconclusive" if c.get("outcome") == "inconclusive" else ("pass" if ok else "fail")
            cell = (f'<td rowspan="{span}">{_e(_clock(g.ts))}</td><td rowspan="{span}">{_e(g.host)}</td>'
                    f'<td rowspan="{span}">{_e(g.task)}{" (rollback)" if g.rollback else ""}</td>'
                    f'<td rowspan="{span}">{verdict} {_e(timing)}</td>') if i == 0 else ""
            rows.append(f'<tr class="{"" if ok else "failed"}">{cell}<td>{_e(c.get("name"))}</td>'
                        f'<td class="{word}">{word}</td>'
                        f'<td class="evidence">{_e(c.get("evidence"))}</td></tr>')
    baselines = ""
    if run.baselines:
        brows = "".join(f"<tr><td>{_e(h)}</td><td>{_e(b.get('requests'))}</td><td>{_e(b.get('error_rate'))}</td>"
                        f"<td>{_e(b.get('p99_ms'))}</td></tr>" for h, b in run.baselines)
        baselines = ("<details><summary>Pre-rollout baseline</summary><table><tr><th>host</th><th>requests</th>"
                     f"<th>error rate</th><th>p99 ms</th></tr>{brows}</table></details>")
    return ("<h2>Health gates</h2><table><tr><th>time</th><th>host</th><th>gate</th><th>result</th><th>check</th>"
            f"<th></th><th>evidence</th></tr>{''.join(rows)}</table>{baselines}")


def _versions(run: Timeline, expected: Any, component: Any) -> str:
    nodes = {k: v for k, v in run.nodes.items() if k != CONTROLLER}
    if not nodes:
        return "<h2>Versions</h2><p class=\"unknown\">No node's version was read.</p>"
    rows = []
    for name in sorted(nodes):
        s = nodes[name]
        on = s.after or "unknown"
        if s.answered is False:
            cls = "fail"
        elif expected and s.after and (not component or s.component in (None, component)):
            cls = "pass" if s.after == expected else "fail"
        else:
            cls = "unknown"
        rows.append(f'<tr class="version-row"><td>{_e(name)}</td><td>{_e(s.before or "unknown")}</td>'
                    f'<td class="{cls}">{_e(on)}</td><td>{_e(s.ha_role or "unknown")}</td>'
                    f"<td>{_e('yes' if s.ready is True else ('no' if s.ready is False else 'unknown'))}</td>"
                    f"<td>{_e('yes' if s.verified else 'no')}</td><td class=\"evidence\">{_e(s.error)}</td></tr>")
    note = f" The fleet was expected to end on {_e(expected)}." if expected else ""
    return ("<h2>Versions</h2><p class=\"muted\">First and last version read from each node during the run; "
            f"checked = read by the final or batch fleet check.{note}</p><table><tr><th>node</th><th>first seen</th>"
            "<th>last seen</th><th>HA role</th><th>ready</th><th>checked</th><th>error</th></tr>"
            f"{''.join(rows)}</table>")


def _check(label: str, ok: bool | None, value: Any) -> str:
    cls, word = ("unknown", "unknown") if ok is None else (("pass", "PASS") if ok else ("fail", "FAIL"))
    return f'<tr><th>{_e(label)}</th><td>{_e(value)}</td><td class="{cls}">{word}</td></tr>'


def _zero(value: Any) -> bool | None:
    return None if as_number(value) is None else value == 0


def _load(load: Mapping[str, Any] | None) -> str:
    if load is None:
        return ""
    if not isinstance(load, Mapping):
        return '<h2>Client load</h2><p class="unknown">The load report is unreadable.</p>'
    withdrawals = load.get("withdrawals") if isinstance(load.get("withdrawals"), Mapping) else {}
    balanced = load.get("ledger_balanced")
    checks = [
        _check("orders lost", _zero(load.get("lost")), load.get("lost", "not reported")),
        _check("orders duplicated", _zero(load.get("duplicated")), load.get("duplicated", "not reported")),
        _check("withdrawals processed twice", _zero(load.get("double_withdrawals")),
               load.get("double_withdrawals", "not reported")),
        _check("withdrawals lost", _zero(withdrawals.get("lost")), withdrawals.get("lost", "not reported")),
        _check("ledger balanced", balanced if isinstance(balanced, bool) else None,
               {True: "yes", False: "no"}.get(balanced, "not reported") if isinstance(balanced, bool)
               else "not reported"),
    ]
    latency = load.get("latency_ms") if isinstance(load.get("latency_ms"), Mapping) else {}
    facts = [("requests sent", load.get("sent")), ("acknowledged", load.get("acked")),
             ("unacknowledged", load.get("unacked")), ("rejected", load.get("rejected")),
             ("HTTP attempts", load.get("attempts")), ("errors", load.get("errors")),
             ("rate (target / achieved)", f"{as_text(load.get('rate'))} / {as_text(load.get('achieved_rate'))} per s"),
             ("latency p50 / p99", f"{as_text(latency.get('p50'))} / {as_text(latency.get('p99'))} ms")]
    facts_html = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v if v is not None else 'unknown')}</td></tr>"
                         for k, v in facts)

    def unavailable(title: str, value: Any) -> str:
        if not isinstance(value, Mapping) or not value:
            return ""
        rows = "".join(f'<tr class="unavailable-row"><td>{_e(k)}</td><td>{_e(v)}</td></tr>'
                       for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
        return f"<table><tr><th>{_e(title)}</th><th>longest unavailable (ms)</th></tr>{rows}</table>"

    unverified = [v for key in ("unverified_markets", "unverified_chains")
                  for v in (load.get(key) if isinstance(load.get(key), list) else [])]
    warn = (f'<p class="fail">Not verified: {_e(", ".join(map(str, unverified)))}</p>' if unverified else "")
    return ('<h2>Client load</h2><p class="muted">The load generator ran during the rollout; afterwards it checked '
            'every acknowledged order and withdrawal against the exchange\'s final state.</p>'
            f'<div class="head"><table class="load-checks">{"".join(checks)}</table>'
            f'<table class="facts">{facts_html}</table>'
            f'{unavailable("market", load.get("max_unavailable_ms"))}'
            f'{unavailable("chain", load.get("max_unavailable_ms_chains"))}</div>{warn}')


def _steps(run: Timeline, lanes: list[str]) -> str:
    parts = ["<h2>Every step</h2>"]
    for host in lanes:
        steps = [s for s in run.steps if s.host == host]
        rows = "".join(
            f'<tr class="{"failed" if s.status in ("failed", "unreachable") else ""}"><td>{_e(_clock(s.start))}</td>'
            f"<td>{s.end - s.start:.1f}s</td><td>{_e(PHASE_BY_NAME[s.phase].label)}"
            f"{' (rollback)' if s.rollback else ''}</td><td>{_e(s.task)}</td><td>{_e(s.status)}</td>"
            f'<td class="evidence">{_e(s.msg[:400])}</td></tr>' for s in steps)
        parts.append(f"<details><summary>{_e(host)}: {len(steps)} steps</summary><table><tr><th>start</th>"
                     "<th>took</th><th>phase</th><th>task</th><th>result</th><th>message</th></tr>"
                     f"{rows}</table></details>")
    return "".join(parts)


def render_html(change: dict[str, Any] | None, records: list[dict[str, Any]],
                load: dict[str, Any] | None = None) -> str:
    """One self-contained HTML report of a run (see the module docstring)."""
    # The callback redacted the records before writing them; this pass (key names, URL
    # credentials, password=..., Bearer ...) also cleans trails written by older versions and
    # the load report, which never went through the callback.
    records = [redact(r) for r in (records or []) if isinstance(r, Mapping)]
    change = redact(change) if isinstance(change, Mapping) else None
    load = redact(load) if isinstance(load, Mapping) else None
    merged = merge_change(records, change)
    run = read_timeline(records)
    outcome = _outcome(merged)
    expected = merged.get("converged_version") or (merged.get("version") or run.plan.get("version")
                                                   if outcome == "successful" else None)
    title = f"Rollout report: {merged.get('patch_id') or run.plan.get('patch_id') or 'unknown patch'}"
    body = [_header(merged, run, outcome)]
    if not run.steps:
        body.append('<h2>Timeline</h2><div class="empty no-events">No events recorded for this run: '
                    "it was refused or stopped before any task ran on a host, or its audit records are "
                    "missing.</div>")
    else:
        component = merged.get("component") or run.plan.get("component")
        body += [_timeline(run), _failures(run), _gates(run), _versions(run, expected, component)]
    body.append(_load(load))
    if run.steps:
        body.append(_steps(run, _lanes(run)))
    body.append(f'<p class="muted">Generated {_e(_when(datetime.now(UTC).timestamp()))} from '
                f"{len(records)} audit records ({run.events} task results).</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
