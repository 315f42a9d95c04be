# Copyright (c) 2026, exchangeops engineering
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The change record of one run, merged from its ``change_*`` audit records: the one merge the
history, the metrics and the report all read.

In record order: ``change_opened`` gives who, what and why (every key but the chain's own:
``v``, ``seq``, ``prev``, ``mac``, ``hash``, ``kind``, ``ts``) and ``started`` (its ``ts``); each
``change_updated`` adds what the playbook learned (its ``change`` mapping); ``change_closed``
gives ``outcome``, ``stats``, ``started`` and ``finished`` (its ``ts`` when it has none).

Later values win, but **null never overwrites a value**: a playbook that publishes
``rolled_back: null`` or ``version: null`` because it does not know (yet) leaves what an earlier
record said; a key seen only as null is kept as null, so readers can tell "said nothing" (absent)
from "said unknown" (null). Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

CHAIN_KEYS = frozenset({"v", "seq", "prev", "mac", "hash", "kind", "ts"})


def put(merged: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` unless ``value`` is null and ``merged`` already has one."""
    if value is not None or key not in merged:
        merged[key] = value


def merge_record(merged: dict[str, Any], rec: Mapping[str, Any]) -> None:
    """Fold one audit record into ``merged`` (records that are not ``change_*`` are ignored)."""
    kind = rec.get("kind")
    if kind == "change_opened":
        for key, value in rec.items():
            if key not in CHAIN_KEYS:
                put(merged, key, value)
        put(merged, "started", rec.get("ts"))
    elif kind == "change_updated" and isinstance(rec.get("change"), Mapping):
        for key, value in rec["change"].items():
            put(merged, str(key), value)
    elif kind == "change_closed":
        for key, value in rec.items():
            if key not in CHAIN_KEYS and key != "run":
                put(merged, key, value)
        put(merged, "finished", rec.get("finished") or rec.get("ts"))


def merge_change(records: Iterable[Mapping[str, Any]], change: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The change record of ``records`` (one run's, in order), with ``change`` folded in last by the
    same rule."""
    merged: dict[str, Any] = {}
    for rec in records:
        if isinstance(rec, Mapping):
            merge_record(merged, rec)
    for key, value in (change or {}).items():
        put(merged, str(key), value)
    return merged
