"""Did a shard ever lose its last ready node? Judged from the nodes' own HA histories, not from timing.

Every testbed node appends its transitions to ``<data_dir>/ha-history.jsonl`` (see
``exchnode.common.HaHistory``): one record per change, each stating the node's role and readiness
*after* it. This module turns the records of a shard's nodes into the intervals during which no
node was ready, and those during which no node was a ready primary (no one could take an order).

How a node's records are read, conservatively:

* between two records the node is what the first one says (``ready``; primary when also
  ``role == "primary"``); ``started`` and ``stopping`` records are never ready;
* a new process (a ``started`` record, or another ``pid``) not announced by a ``stopping`` record
  means the old process died at an unknown time (SIGKILL, crash): the node counts as not ready
  from its last record before the new process;
* before its first record a node was not ready; its last record holds until ``end``, so read the
  histories after ``end`` and from nodes that are still running.

One exception, the *handover*: a testbed standby is ready only while it follows a primary, so in a
switchover the standby about to be promoted may see its primary step down, and report not ready,
a few milliseconds (up to a few hundred under load) before its promote arrives: 15 of 300
switchovers of an idle pair did, and 2 of the 4 of a 2-shard rollout under client load. Nobody
was lost: the same process, ready just before, becomes the primary. A not-ready stretch of a node
is counted as ready when it lies wholly inside a gap with no ready primary, the same process was
ready right before it and is a ready primary right after it. Such stretches are reported
(``handovers``), never hidden; a standby that was not ready before the step-down, or that
restarted, is not a handover.

The functions here are pure: ``read_history`` is the only one that touches a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from testbed.exchnode.common import HA_HISTORY_FILE, HA_STARTED, HA_STOPPING, read_ha_history

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Gap:
    """An interval, in Unix seconds."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Span:
    """What one node was from ``start`` to ``end``."""

    start: float
    end: float
    ready: bool
    primary: bool
    pid: Any = None


@dataclass(frozen=True)
class ShardVerdict:
    """The gaps of one shard over the interval it was judged on."""

    start: float
    end: float
    no_ready: list[Gap] = field(default_factory=list)  # no node of the shard was ready
    no_primary: list[Gap] = field(default_factory=list)  # no node was a ready primary
    handovers: list[Gap] = field(default_factory=list)  # a standby between its primary's step-down and its promote

    @property
    def longest_no_primary(self) -> float:
        return max((g.seconds for g in self.no_primary), default=0.0)

    @property
    def longest_no_ready(self) -> float:
        return max((g.seconds for g in self.no_ready), default=0.0)

    def describe(self) -> str:
        ready = ", ".join(f"{g.start:.3f}+{g.seconds:.3f}s" for g in self.no_ready) or "none"
        return (f"no ready node: {ready}; no ready primary: {len(self.no_primary)} gap(s), "
                f"longest {self.longest_no_primary:.3f}s; handovers: {len(self.handovers)}, longest "
                f"{max((g.seconds for g in self.handovers), default=0.0):.3f}s")


def _new_process(before: Record, after: Record) -> bool:
    if after.get("event") == HA_STARTED:
        return True
    pids = before.get("pid"), after.get("pid")
    return None not in pids and pids[0] != pids[1]


def node_spans(records: Iterable[Record], end: float) -> list[Span]:
    """One node's records as consecutive spans up to ``end`` (records need not be sorted)."""
    recs = sorted(records, key=lambda r: float(r["t"]))
    spans: list[Span] = []
    for i, rec in enumerate(recs):
        nxt = recs[i + 1] if i + 1 < len(recs) else None
        t0 = float(rec["t"])
        t1 = float(nxt["t"]) if nxt is not None else max(t0, end)
        if nxt is not None and _new_process(rec, nxt) and rec.get("event") != HA_STOPPING:
            ready = False  # died unannounced somewhere after this record
        else:
            ready = rec.get("ready") is True and rec.get("event") not in (HA_STARTED, HA_STOPPING)
        spans.append(Span(t0, t1, ready, ready and rec.get("role") == "primary", rec.get("pid")))
    return spans


def _handovers(spans: list[Span], no_primary: list[Gap]) -> list[Span]:
    """The not-ready stretches of one node's spans that are a handover (see the module docstring)."""
    out: list[Span] = []
    i = 1
    while i < len(spans):
        if spans[i].ready or not spans[i - 1].ready:
            i += 1
            continue
        j = i
        while j < len(spans) and not spans[j].ready:
            j += 1  # spans[i:j] is one not-ready stretch, spans[i - 1] was ready
        run = spans[i - 1:j + 1]
        if (j < len(spans) and spans[j].primary and len({s.pid for s in run}) == 1
                and any(g.start <= spans[i].start and spans[j - 1].end <= g.end for g in no_primary)):
            out += [Span(s.start, s.end, True, False, s.pid) for s in spans[i:j]]
        i = j + 1
    return out


def _uncovered(covered: Iterable[tuple[float, float]], start: float, end: float) -> list[Gap]:
    """The parts of [start, end] that no interval of ``covered`` overlaps."""
    gaps: list[Gap] = []
    at = start
    for a, b in sorted((max(a, start), min(b, end)) for a, b in covered):
        if b <= a:
            continue
        if a > at:
            gaps.append(Gap(at, a))
        at = max(at, b)
    if at < end:
        gaps.append(Gap(at, end))
    return gaps


def shard_verdict(histories: Mapping[str, Iterable[Record]], start: float, end: float) -> ShardVerdict:
    """The gaps in [start, end] with no ready node and with no ready primary, over a shard's nodes.

    ``histories`` maps each node of the shard to its records (any order across nodes).
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}; pass the interval the rollout ran in")
    per_node = [node_spans(records, end) for records in histories.values()]
    spans = [s for node in per_node for s in node]
    # over all time, not just [start, end]: a handover that began before start is still one
    no_primary = _uncovered(((s.start, s.end) for s in spans if s.primary), -float("inf"), end)
    handovers = [s for node in per_node for s in _handovers(node, no_primary)]
    return ShardVerdict(
        start, end,
        no_ready=_uncovered(((s.start, s.end) for s in spans + handovers if s.ready), start, end),
        no_primary=_uncovered(((s.start, s.end) for s in spans if s.primary), start, end),
        handovers=[Gap(max(s.start, start), min(s.end, end)) for s in handovers if s.end > start and s.start < end],
    )


def shard_verdicts(by_shard: Mapping[Any, Mapping[str, Iterable[Record]]], start: float,
                   end: float) -> dict[Any, ShardVerdict]:
    """``shard_verdict`` for every shard of ``{shard: {node: records}}``."""
    return {shard: shard_verdict(histories, start, end) for shard, histories in by_shard.items()}


# --------------------------------------------------------------------------- reading nodes


class NodeLike(Protocol):
    name: str
    root: str
    component: str
    shard: int | None


def history_file(node_root: str | Path) -> Path:
    """Where a node keeps its HA history: its config's data_dir (``<root>/data`` by default)."""
    root = Path(node_root)
    try:
        data_dir = json.loads((root / "etc" / "node.json").read_text())["data_dir"]
    except (OSError, ValueError, KeyError):
        data_dir = root / "data"
    return Path(data_dir) / HA_HISTORY_FILE


def read_history(node_root: str | Path) -> list[dict[str, Any]]:
    """A node's HA history records, read from its root (unreadable lines skipped)."""
    return read_ha_history(str(history_file(node_root)))


def fleet_histories(nodes: Sequence[NodeLike]) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """``{shard: {node name: records}}`` for the matching nodes of a fleet (``testbed.fleet.Fleet.nodes``)."""
    out: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for node in nodes:
        if node.component == "matching-engine" and node.shard is not None:
            out.setdefault(node.shard, {})[node.name] = read_history(node.root)
    return out
