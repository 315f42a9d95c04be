"""Matching-engine node: price-time-priority books, a write-ahead journal, primary/standby HA.

State changes (orders, cancels, market-mode changes) are journal entries
``{seq, term, ts, type, ..., hash}`` appended durably before they are applied and
acknowledged. ``hash`` chains every entry to the one before it
(``sha256({"prev": hash of seq-1, "entry": entry})``), so two journals with the same hash
at a sequence are identical up to it; that is how a follower tells a gap (it lacks entries)
from a divergence (it holds entries the primary never had, e.g. an old primary's tail
that was never replicated). A divergent journal is replaced whole by the primary's
(``Journal.replace`` keeps the old file beside it) and the books are rebuilt.

Replication is synchronous: the primary, holding its sequencing lock, appends locally, posts
the entry to the standby's ``/v1/replication/append`` and acknowledges only once the standby
has it durably. When the standby cannot be reached the primary goes ``degraded`` (local
durability only) and a background thread retries at most every ~0.5 s, pushing the missing
entries when the standby is back. The standby also pulls ``/v1/replication/journal`` every
0.5 s, so it catches up with no traffic, and resyncs when its journal diverged.

Terms order primaries: promote takes ``max(own, peer) + 1``; a node hearing of a higher-term
primary steps down; a standby rejects appends from a lower term.

Release fault ``state-divergence``: this release's matcher has a real bug. It queues orders
LIFO inside a price level (newest first, instead of time priority) and, when an incoming
order is partly filled, rests its full quantity instead of the unfilled remainder. Both are
deterministic, so the node replays and serves normally, but its state hash differs from an
unpatched node's at the same sequence.

``GET /v1/state/hash?seq=N`` answers the state hash at any applied sequence N by replaying the
journal up to N into a ``ScratchEngine`` with this release's own apply code, so two nodes on
different releases can be compared at the same N while orders keep flowing.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import random
import re
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import unquote

from exchnode.common import (
    Fence,
    HttpError,
    Journal,
    Node,
    PeerClient,
    Release,
    Request,
    canonical_hash,
    write_json_durably,
)

LOG = logging.getLogger("exchnode.matching")

MODES = ("open", "post_only", "cancel_only", "halted")
SIDES = ("buy", "sell")
CLIENT_ORDER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_INT = 10**15

PEER_TIMEOUT_S = 1.0  # loopback: a peer that does not answer in 1 s is down for our purpose
APPEND_LOCK_WAIT_S = 0.8  # below PEER_TIMEOUT_S, so a busy standby answers before the primary gives up
RETRY_S = 0.5  # a degraded primary retries the standby at most this often
HEARTBEAT_S = 1.0  # an idle, in-sync primary checks its standby this often
FOLLOW_S = 0.5  # a standby pulls from the primary this often
CONTACT_FRESH_S = 3.0  # a standby that has not heard from the primary for longer is not following
READY_LAG = 100  # a standby this close to the primary is caught up (in-flight appends under live load)
PAGE = 1000  # entries per replication request
MAX_PAGE = 5000
PUSH_MAX = 5000  # a primary pushes a gap this large itself; beyond that the standby pulls


def entry_hash(prev: str, entry: dict[str, Any]) -> str:
    """Chained hash of a journal entry: it covers the entry and the hash before it."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return canonical_hash({"prev": prev, "entry": body})


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- books


class Order:
    __slots__ = (
        "cancel_seq",
        "client_order_id",
        "filled_qty",
        "market",
        "order_id",
        "price",
        "qty",
        "remaining",
        "seq",
        "side",
        "status",
    )

    def __init__(self, order_id: str, client_order_id: str, market: str, side: str, price: int, qty: int,
                 seq: int) -> None:
        self.order_id = order_id
        self.client_order_id = client_order_id
        self.market = market
        self.side = side
        self.price = price
        self.qty = qty
        self.seq = seq
        self.filled_qty = 0
        self.remaining = qty
        self.status = "open"
        self.cancel_seq: int | None = None

    def view(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id, "client_order_id": self.client_order_id, "side": self.side,
            "price": self.price, "qty": self.qty, "filled_qty": self.filled_qty, "status": self.status,
        }


class Book:
    """One market's limit order book: per side, price levels of FIFO queues."""

    def __init__(self, lifo: bool = False) -> None:
        self.levels: dict[str, dict[int, deque[Order]]] = {"buy": {}, "sell": {}}
        self.prices: dict[str, list[int]] = {"buy": [], "sell": []}  # ascending
        self.lifo = lifo  # the state-divergence bug: newest order first at a level

    def best(self, side: str) -> int | None:
        prices = self.prices[side]
        if not prices:
            return None
        return prices[-1] if side == "buy" else prices[0]

    def crosses(self, side: str, price: int) -> bool:
        """True when an order on ``side`` at ``price`` would trade against the book."""
        best = self.best("sell" if side == "buy" else "buy")
        if best is None:
            return False
        return price >= best if side == "buy" else price <= best

    def rest(self, order: Order) -> None:
        levels = self.levels[order.side]
        queue = levels.get(order.price)
        if queue is None:
            queue = levels[order.price] = deque()
            bisect.insort(self.prices[order.side], order.price)
        if self.lifo:
            queue.appendleft(order)
        else:
            queue.append(order)

    def _drop_level(self, side: str, price: int) -> None:
        del self.levels[side][price]
        prices = self.prices[side]
        del prices[bisect.bisect_left(prices, price)]

    def remove(self, order: Order) -> None:
        queue = self.levels[order.side].get(order.price)
        if queue is None:
            return
        try:
            queue.remove(order)
        except ValueError:
            return
        if not queue:
            self._drop_level(order.side, order.price)

    def match(self, order: Order) -> None:
        """Fill ``order`` against the opposite side while it crosses, oldest first, at resting prices."""
        opposite = "sell" if order.side == "buy" else "buy"
        while order.remaining > 0 and self.crosses(order.side, order.price):
            price = self.best(opposite)
            assert price is not None
            queue = self.levels[opposite][price]
            maker = queue[0]
            fill = min(order.remaining, maker.remaining)
            maker.remaining -= fill
            maker.filled_qty += fill
            order.remaining -= fill
            order.filled_qty += fill
            if maker.remaining == 0:
                maker.status = "filled"
                queue.popleft()
                if not queue:
                    self._drop_level(opposite, price)
            else:
                maker.status = "partially_filled"

    def _ordered_prices(self, side: str) -> list[int]:
        return list(reversed(self.prices[side])) if side == "buy" else list(self.prices[side])

    def depth(self, side: str) -> list[list[int]]:
        return [[p, sum(o.remaining for o in self.levels[side][p])] for p in self._ordered_prices(side)]

    def canonical(self, side: str) -> list[list[Any]]:
        """Resting orders of ``side`` in priority order."""
        return [
            [o.order_id, o.client_order_id, o.side, o.price, o.remaining]
            for p in self._ordered_prices(side)
            for o in self.levels[side][p]
        ]


class Market:
    def __init__(self, name: str, lifo: bool) -> None:
        self.name = name
        self.mode = "open"
        self.book = Book(lifo)
        self.orders: list[Order] = []
        self.by_client_id: dict[str, Order] = {}
        self.acks: dict[str, dict[str, Any]] = {}  # the original ack of every client_order_id


# --------------------------------------------------------------------------- engine state


class EngineState:
    """The books of a node's markets and the code that applies journal entries to them.

    ``MatchingNode`` is one (its live state); ``/v1/state/hash`` replays a journal prefix into a
    scratch one (``ScratchEngine``), so the hash a node reports at any sequence comes from the
    node's own release code, bugs included.
    """

    market_names: list[str]
    faulty: bool
    _state_lock: threading.RLock

    def _reset_state(self) -> None:
        with self._state_lock:
            self.markets: dict[str, Market] = {m: Market(m, self.faulty) for m in self.market_names}
            self._applied = 0
            self._orders_total = 0
            self._hash_cache: str | None = None

    def _market(self, name: str) -> Market:
        m = self.markets.get(name)
        if m is None:  # an entry for a market this node's config lacks: keep it, deterministically
            m = self.markets[name] = Market(name, self.faulty)
        return m

    def _apply(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Apply one journal entry to the books; deterministic, never raises for a journaled entry."""
        with self._state_lock:
            result: dict[str, Any] = {}
            try:
                kind = entry.get("type")
                if kind == "order":
                    result = self._apply_order(entry)
                elif kind == "cancel":
                    result = self._apply_cancel(entry)
                elif kind == "mode":
                    for name in entry.get("markets") or []:
                        self._market(name).mode = entry["mode"]
                    result = {"mode": entry["mode"], "markets": list(entry.get("markets") or [])}
                else:
                    LOG.warning("journal entry %s has unknown type %r; skipped", entry.get("seq"), kind)
            except Exception:
                LOG.exception("applying journal entry %s failed", entry.get("seq"))
            self._applied = int(entry["seq"])
            self._hash_cache = None
            return result

    def _apply_order(self, e: dict[str, Any]) -> dict[str, Any]:
        m = self._market(e["market"])
        coid = e["client_order_id"]
        if coid in m.acks:  # never a second order for a client_order_id
            return dict(m.acks[coid])
        seq = int(e["seq"])
        order = Order(f"o-{seq}", coid, m.name, e["side"], int(e["price"]), int(e["qty"]), seq)
        m.book.match(order)
        if order.remaining > 0:
            if self.faulty and order.filled_qty:
                order.remaining = order.qty  # the state-divergence bug: fills not deducted from the rest
            m.book.rest(order)
        if order.remaining == 0:
            order.status = "filled"
        elif order.filled_qty:
            order.status = "partially_filled"
        m.orders.append(order)
        m.by_client_id[coid] = order
        self._orders_total += 1
        ack = {
            "order_id": order.order_id, "client_order_id": coid, "market": m.name, "side": order.side,
            "price": order.price, "qty": order.qty, "seq": seq, "status": order.status,
            "filled_qty": order.filled_qty,
        }
        m.acks[coid] = ack
        return dict(ack)

    def _apply_cancel(self, e: dict[str, Any]) -> dict[str, Any]:
        m = self._market(e["market"])
        order = m.by_client_id.get(e["client_order_id"])
        if order is None:
            return {"client_order_id": e["client_order_id"], "status": "unknown", "seq": e["seq"]}
        if order.status in ("open", "partially_filled"):
            m.book.remove(order)
            order.remaining = 0
            order.status = "cancelled"
            order.cancel_seq = int(e["seq"])
        return {"client_order_id": order.client_order_id, "status": order.status, "seq": e["seq"]}

    def _canonical(self) -> dict[str, Any]:
        return {
            name: {"mode": m.mode, "bids": m.book.canonical("buy"), "asks": m.book.canonical("sell")}
            for name, m in self.markets.items()
        }

    def _state_hash(self) -> str:
        with self._state_lock:
            if self._hash_cache is None:
                self._hash_cache = canonical_hash({"markets": self._canonical()})
            return self._hash_cache


class ScratchEngine(EngineState):
    """A private engine with the node's markets and apply code, for replaying a journal prefix."""

    def __init__(self, market_names: list[str], faulty: bool) -> None:
        self.market_names = list(market_names)
        self.faulty = faulty
        self._state_lock = threading.RLock()
        self._reset_state()


# --------------------------------------------------------------------------- node


class MatchingNode(Node, EngineState):
    component = "matching-engine"

    def __init__(self, config: dict[str, Any], release: Release) -> None:
        super().__init__(config, release)
        self.shard = int(config.get("shard", 0))
        self.market_names: list[str] = [str(m) for m in config.get("markets") or []]
        self.data_dir = str(config["data_dir"])
        self.fsync = bool(config.get("fsync", True))
        self.faulty = release.fault == "state-divergence"
        peer = config.get("peer") or None
        self.peer_name: str | None = peer.get("name") if peer else None
        self.peer_url: str | None = peer.get("url") if peer else None
        # One client for what the primary pushes (under the sequencing lock), one for pulls and probes.
        self._push = PeerClient(self.peer_url, self.replication_token, timeout=PEER_TIMEOUT_S) if peer else None
        self._pull = PeerClient(self.peer_url, self.replication_token, timeout=PEER_TIMEOUT_S) if peer else None
        self._seq_lock = threading.RLock()  # sequencing: journal appends, role changes
        self._state_lock = threading.RLock()  # the books, for short reads and applies
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.journal: Journal | None = None
        self._role = "standby"
        self._term = 0
        self._started = False
        self._repl_state = "degraded"  # primary: sync | degraded
        self._next_push = 0.0
        self._last_push_ok = 0.0
        self._peer_seq: int | None = None
        self._peer_contact = 0.0
        self._peer_is_primary = False
        self._diverged = False
        self._replay_lock = threading.Lock()  # the /v1/state/hash checkpoint below
        self._checkpoint: tuple[str, ScratchEngine] | None = None  # (hash of its last entry, engine)
        self._reset_state()
        # the rollout lease's fencing tokens, for step-down, promote and market modes (see Fence)
        self.fence = Fence(self.data_dir, [f"shard-{self.shard}"], self.name)

        add = self.router.add
        add("POST", "/markets/{market}/orders", self._h_place, auth="none", kind="client")
        add("POST", "/markets/{market}/orders/{client_order_id}/cancel", self._h_cancel, auth="none", kind="client")
        add("GET", "/markets/{market}/orders", self._h_orders, auth="none", kind="client")
        add("GET", "/markets/{market}/book", self._h_book, auth="none", kind="client")
        add("POST", "/v1/markets/mode", self._h_mode, auth="admin")
        add("POST", "/v1/ha/step-down", self._h_step_down, auth="admin")
        add("POST", "/v1/ha/promote", self._h_promote, auth="admin")
        add("GET", "/v1/state/hash", self._h_state_hash, auth="admin")
        add("POST", "/v1/replication/append", self._h_append, auth="replication")
        add("GET", "/v1/replication/journal", self._h_journal, auth="replication")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        self._load_role()
        self.fence.load()
        self.journal = Journal(os.path.join(self.data_dir, "journal.jsonl"), fsync=self.fsync)
        self._replay()
        LOG.info("replayed %d journal entries; role %s, term %d, state %s",
                 self._applied, self._role, self._term, self._state_hash()[:12])
        if self._role == "primary" and self._pull is not None:
            self._startup_check()
        self._wake.set()  # first HA round right away: a standby pulls, a primary contacts its standby
        self._thread = threading.Thread(target=self._ha_loop, name="ha", daemon=True)
        self._thread.start()
        self._started = True

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        locked = self._seq_lock.acquire(timeout=3)
        try:
            if self.journal is not None:
                self.journal.close()
        finally:
            if locked:
                self._seq_lock.release()
        for client in (self._push, self._pull):
            if client is not None:
                client.close()

    # ------------------------------------------------------------------ role

    def _role_path(self) -> str:
        return os.path.join(self.data_dir, "role.json")

    def _load_role(self) -> None:
        path = self._role_path()
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
            role, term = raw.get("role"), int(raw.get("term", 0))
            if role not in ("primary", "standby"):
                raise SystemExit(f"{path}: role {role!r} is neither primary nor standby; fix or delete the file")
            self._role, self._term = role, term
            return
        role = self.config.get("initial_role") or ("standby" if self.peer_url else "primary")
        if role not in ("primary", "standby"):
            raise SystemExit(f"initial_role {role!r} in the node config must be primary or standby")
        self._set_role(role, 1 if role == "primary" else 0)

    def _set_role(self, role: str, term: int) -> None:
        """Persist the role and term durably, then adopt them."""
        write_json_durably(self._role_path(), {"role": role, "term": term})
        self._role, self._term = role, term

    def _become_standby(self, term: int, why: str) -> None:
        with self._seq_lock:
            if self._role == "primary":
                LOG.warning("stepping down to standby (term %d): %s", term, why)
            self._set_role("standby", max(term, self._term))
            self._peer_seq = None
            self._peer_is_primary = False
            self.history.observe()
        self._wake.set()

    def _peer_wins(self, term: int, sender: str) -> bool:
        """Whether a primary in ``term`` named ``sender`` outranks this node as primary."""
        return term > self._term or (term == self._term and bool(sender) and sender < self.name)

    # ------------------------------------------------------------------ state

    def _replay(self) -> None:
        assert self.journal is not None
        records = self.journal.records
        prev = ""
        for i, e in enumerate(records):
            if e.get("seq") != i + 1:
                raise SystemExit(
                    f"journal {self.journal.path}: line {i + 1} holds seq {e.get('seq')}; the journal is not "
                    "contiguous. Move it aside and let the node resync from its peer."
                )
            if entry_hash(prev, e) != e.get("hash"):
                LOG.error("journal entry %d: its hash does not match its content and chain", i + 1)
            prev = e.get("hash", "")
        with self._state_lock:
            self._reset_state()
            for e in records:
                self._apply(e)

    def _apply_pending(self) -> None:
        """Apply every journaled entry not applied yet (normally none)."""
        assert self.journal is not None
        with self._state_lock:
            for e in self.journal.records[self._applied:]:
                self._apply(e)

    def _journal_seq(self) -> int:
        assert self.journal is not None
        return len(self.journal.records)

    def _last_hash(self) -> str:
        assert self.journal is not None
        records = self.journal.records
        return records[-1]["hash"] if records else ""

    def _last_term(self) -> int:
        assert self.journal is not None
        records = self.journal.records
        return int(records[-1].get("term", 0)) if records else 0

    # ------------------------------------------------------------------ sequencing (primary)

    def _require_primary(self) -> None:
        if self._role != "primary":
            raise HttpError(503, "standby")
        if not self._started:
            raise HttpError(503, "not serving yet")

    def _commit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Holding the sequencing lock: journal, replicate, apply; return the apply result."""
        assert self.journal is not None
        records = self.journal.records
        entry = {"seq": len(records) + 1, "term": self._term, "ts": round(time.time(), 3), **body}
        entry["hash"] = entry_hash(records[-1]["hash"] if records else "", entry)
        self.journal.append([entry])
        self._replicate()
        result = self._apply(entry)
        if self._role != "primary":
            raise HttpError(
                503, "standby",
                detail="this node learnt of a newer primary while replicating; the request was not acknowledged",
            )
        return result

    def _replicate(self) -> bool:
        """Holding the sequencing lock: have the standby durably store our last entry."""
        if self._push is None or self._repl_state != "sync":
            return False  # degraded: the HA thread reconnects, not every order
        return self._sync_peer(self._journal_seq() - 1)

    def _degrade(self, why: str) -> None:
        if self._repl_state != "degraded":
            LOG.warning("replication to %s degraded: %s", self.peer_name, why)
        self._repl_state = "degraded"
        self._next_push = time.monotonic() + RETRY_S * random.uniform(0.8, 1.2)

    def _sync_peer(self, start: int | None) -> bool:
        """Holding the sequencing lock: bring the standby to our last seq.

        ``start`` is the index of the first entry to send (None sends none: a heartbeat).
        The standby answers 409 gap with its last seq when it lacks entries; we then send
        those, unless the gap is so large that it had better pull them itself.
        """
        assert self.journal is not None and self._push is not None
        records = self.journal.records
        n = len(records)
        last_hash = records[-1]["hash"] if records else ""
        last_gap: int | None = None
        for _page in range(PUSH_MAX // PAGE + 3):
            batch = [] if start is None else records[start:start + PAGE]
            body = {"term": self._term, "from": self.name, "seq": n, "hash": last_hash, "entries": batch}
            try:
                status, answer = self._push.request("POST", "/v1/replication/append", body)
            except OSError as e:
                self._degrade(f"standby unreachable ({e})")
                return False
            answer = answer if isinstance(answer, dict) else {}
            if status == 200:
                if self._repl_state != "sync":
                    LOG.info("replication to %s in sync at seq %d", self.peer_name, n)
                self._repl_state = "sync"
                self._peer_seq = int(answer.get("seq", n))
                self._last_push_ok = time.monotonic()
                return True
            if status == 409 and answer.get("error") == "gap":
                got = int(answer.get("seq", 0))
                self._peer_seq = got
                if n - got > PUSH_MAX:
                    self._degrade(f"standby is {n - got} entries behind; it catches up by pulling")
                    return False
                if last_gap is not None and got <= last_gap:
                    self._degrade(f"standby makes no progress at seq {got}")
                    return False
                last_gap = start = got
                continue
            self._rejected(status, answer)
            return False
        self._degrade("standby still behind after pushing")
        return False

    def _rejected(self, status: int, answer: dict[str, Any]) -> None:
        error = answer.get("error")
        peer_term = int(answer.get("term") or 0)
        if error == "stale term" or (error == "primary" and peer_term >= self._term):
            # A newer primary exists (or the peer won the tie): two primaries must not serve.
            self._become_standby(peer_term, f"peer {self.peer_name} answered {error!r} in term {peer_term}")
        elif error == "diverged":
            self._degrade("standby's journal diverged; it resyncs from this primary")
        else:
            self._degrade(f"standby answered {status} {error!r}")

    # ------------------------------------------------------------------ following (standby)

    def _accept(self, entries: list[Any]) -> str:
        """Holding the sequencing lock: append entries that continue our journal.

        Returns "ok", "gap" (an entry is beyond our last seq + 1) or "diverged".
        """
        assert self.journal is not None
        records = self.journal.records
        base = len(records)
        last = base
        prev = records[-1]["hash"] if records else ""
        new: list[dict[str, Any]] = []
        outcome = "ok"
        for e in entries:
            if not isinstance(e, dict) or _int(e.get("seq")) is None or not isinstance(e.get("hash"), str):
                raise HttpError(400, "replication entries must be journal entries with an int seq and a hash")
            s = e["seq"]
            if s <= base:
                if s < 1 or records[s - 1]["hash"] != e["hash"]:
                    return "diverged"
                continue
            if s <= last:
                continue  # repeated within the batch
            if s != last + 1:
                outcome = "gap"
                break
            if entry_hash(prev, e) != e["hash"]:
                return "diverged"
            new.append(e)
            prev, last = e["hash"], s
        if new:
            self.journal.append(new)
            for e in new:
                self._apply(e)
        return outcome

    def _mark_diverged(self, why: str) -> None:
        if not self._diverged:
            LOG.warning("journal diverged from the primary's: %s; resyncing", why)
        self._diverged = True
        self._wake.set()

    def _peer_get(self, from_seq: int, limit: int) -> dict[str, Any] | None:
        assert self._pull is not None
        try:
            status, body = self._pull.request("GET", f"/v1/replication/journal?from_seq={from_seq}&limit={limit}")
        except OSError:
            return None
        if status != 200 or not isinstance(body, dict):
            LOG.warning("peer %s answered %s to a journal read: %s", self.peer_name, status, body)
            return None
        return body

    def _pull_once(self, require_primary: bool) -> str:
        """Pull the next page of the peer's journal.

        Returns "caught_up", "more", "diverged", "unreachable", "not_primary" or "stale".
        """
        last = self._journal_seq()
        info = self._peer_get(last + 1, PAGE)
        if info is None:
            self._peer_is_primary = False
            return "unreachable"
        peer_term, peer_seq = int(info.get("term", 0)), int(info.get("seq", 0))
        if require_primary:
            if info.get("role") != "primary":
                self._peer_is_primary = False
                return "not_primary"
            if peer_term < self._term:
                self._peer_is_primary = False
                return "stale"
            self._peer_is_primary = True
        self._peer_contact = time.monotonic()
        self._peer_seq = peer_seq
        with self._seq_lock:
            if require_primary:
                if self._role != "standby":
                    return "stale"
                if peer_term > self._term:
                    self._set_role("standby", peer_term)
            if self._journal_seq() < last:
                return "caught_up"  # our journal was replaced meanwhile; pull again next time
            if peer_seq < last:
                return "diverged"  # we hold entries the peer does not have
            prev_hash = info.get("prev_hash")
            if last > 0 and prev_hash is not None and self.journal.records[last - 1]["hash"] != prev_hash:
                return "diverged"
            if self._accept(list(info.get("entries") or [])) == "diverged":
                return "diverged"
            return "more" if self._journal_seq() < peer_seq else "caught_up"

    def _fetch_all(self) -> list[dict[str, Any]] | None:
        out: list[dict[str, Any]] = []
        prev = ""
        while True:
            info = self._peer_get(len(out) + 1, MAX_PAGE)
            if info is None:
                return None
            entries = info.get("entries") or []
            for e in entries:
                if e.get("seq") != len(out) + 1 or entry_hash(prev, e) != e.get("hash"):
                    LOG.error("peer %s sent a broken journal at seq %s; resync abandoned", self.peer_name, e.get("seq"))
                    return None
                out.append(e)
                prev = e["hash"]
            if not entries or len(out) >= int(info.get("seq", 0)):
                return out

    def _resync(self, why: str) -> bool:
        """Replace our whole journal with the peer's (keeping ours aside) and rebuild the books."""
        assert self.journal is not None
        with self._seq_lock:
            LOG.warning("resyncing the journal from %s: %s", self.peer_name, why)
            entries = self._fetch_all()
            if entries is None:
                return False
            kept = self.journal.replace(entries)
            with self._state_lock:
                self._reset_state()
                for e in entries:
                    self._apply(e)
            self._diverged = False
            LOG.warning("journal replaced by %s's (%d entries, state %s); the old journal is kept at %s",
                        self.peer_name, len(entries), self._state_hash()[:12], kept)
            return True

    def _follow(self, require_primary: bool, pages: int = 50) -> str:
        outcome = "caught_up"
        for _page in range(pages):
            outcome = self._pull_once(require_primary)
            if outcome != "more":
                break
        if outcome == "diverged":
            outcome = "caught_up" if self._resync("the peer's journal differs from ours") else "unreachable"
        return outcome

    def _reconcile(self, info: dict[str, Any]) -> None:
        """Holding the sequencing lock: take what the peer has if its journal is more up to date."""
        mine = (self._last_term(), self._journal_seq())
        theirs = (int(info.get("last_term", 0)), int(info.get("seq", 0)))
        if theirs > mine:
            LOG.info("peer %s's journal %s is ahead of ours %s; taking its entries", self.peer_name, theirs, mine)
            self._follow(require_primary=False)

    def _startup_check(self) -> None:
        """A node restarting as primary first asks its peer, so two primaries do not serve."""
        assert self.journal is not None
        info = self._peer_get(self._journal_seq() + 1, 0)
        if info is None:
            LOG.warning("peer %s unreachable at start; serving as primary, replication degraded", self.peer_name)
            return
        peer_term = int(info.get("term", 0))
        if info.get("role") == "primary":
            serving_tie = peer_term == self._term and (bool(info.get("serving")) or str(info.get("name")) < self.name)
            if peer_term > self._term or serving_tie:
                self._become_standby(peer_term, f"peer {self.peer_name} is primary in term {peer_term}")
                return
            LOG.warning("peer %s is also primary but in term %d <= %d; it will step down", self.peer_name,
                        peer_term, self._term)
            return
        with self._seq_lock:
            self._reconcile(info)
            if peer_term > self._term:
                self._set_role("primary", peer_term)

    # ------------------------------------------------------------------ HA thread

    def _ha_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(FOLLOW_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self._role == "primary":
                    self._primary_tick()
                else:
                    self._standby_tick()
            except Exception:
                LOG.exception("HA loop")
            self.history.observe()  # following or not is decided here: record it when it changes

    def _primary_tick(self) -> None:
        if self._push is None:
            return
        now = time.monotonic()
        if self._repl_state == "sync" and now - self._last_push_ok < HEARTBEAT_S:
            return
        if self._repl_state == "degraded" and now < self._next_push:
            return
        if not self._seq_lock.acquire(timeout=0.2):
            return
        try:
            if self._role == "primary":
                self._sync_peer(None)
        finally:
            self._seq_lock.release()

    def _standby_tick(self) -> None:
        if self._pull is None:
            return
        if self._diverged:
            info = self._peer_get(1, 0)
            if info and info.get("role") == "primary" and int(info.get("term", 0)) >= self._term:
                self._resync("the primary rejected our journal as diverged")
            return
        self._follow(require_primary=True)

    # ------------------------------------------------------------------ client routes

    def _market_name(self, req: Request) -> str:
        name = unquote(req.params["market"])
        if name not in self.market_names:
            raise HttpError(404, f"unknown market {name!r}", markets=self.market_names)
        return name

    def _h_place(self, req: Request) -> Any:
        self._require_primary()  # a standby answers 503 to every client route
        market = self._market_name(req)
        body = req.json()
        coid = body.get("client_order_id")
        if not isinstance(coid, str) or not CLIENT_ORDER_ID_RE.match(coid):
            raise HttpError(400, "client_order_id must be 1-64 characters of letters, digits, '.', '_', ':' or '-'")
        side = body.get("side")
        if side not in SIDES:
            raise HttpError(400, "side must be \"buy\" or \"sell\"")
        price, qty = _int(body.get("price")), _int(body.get("qty"))
        if price is None or not 0 < price <= MAX_INT:
            raise HttpError(400, f"price must be an integer between 1 and {MAX_INT}")
        if qty is None or not 0 < qty <= MAX_INT:
            raise HttpError(400, f"qty must be an integer between 1 and {MAX_INT}")
        with self._seq_lock:
            self._require_primary()
            with self._state_lock:
                m = self.markets[market]
                if coid in m.acks:
                    return {**m.acks[coid], "replayed": True}
                if m.mode in ("cancel_only", "halted"):
                    raise HttpError(409, f"{m.mode}: new orders are not accepted in market {market}")
                if m.mode == "post_only" and m.book.crosses(side, price):
                    raise HttpError(409, "post_only: order would cross")
            return self._commit({"type": "order", "market": market, "client_order_id": coid, "side": side,
                                 "price": price, "qty": qty})

    def _h_cancel(self, req: Request) -> Any:
        self._require_primary()  # a standby answers 503 to every client route
        market = self._market_name(req)
        coid = unquote(req.params["client_order_id"])
        with self._seq_lock:
            self._require_primary()
            with self._state_lock:
                m = self.markets[market]
                if m.mode == "halted":
                    raise HttpError(409, f"halted: cancels are not accepted in market {market}")
                order = m.by_client_id.get(coid)
                if order is None:
                    raise HttpError(404, f"unknown client_order_id {coid!r} in market {market}")
                if order.status == "cancelled":
                    return {"client_order_id": coid, "status": "cancelled", "seq": order.cancel_seq,
                            "replayed": True}
                if order.status == "filled":
                    raise HttpError(409, "order is already filled", client_order_id=coid, order_status="filled")
            return self._commit({"type": "cancel", "market": market, "client_order_id": coid})

    def _h_orders(self, req: Request) -> Any:
        self._require_primary()  # a standby answers 503 to every client route
        market = self._market_name(req)
        with self._state_lock:
            m = self.markets[market]
            return {"market": market, "seq": self._applied, "orders": [o.view() for o in m.orders]}

    def _h_book(self, req: Request) -> Any:
        self._require_primary()  # a standby answers 503 to every client route
        market = self._market_name(req)
        with self._state_lock:
            m = self.markets[market]
            return {"market": market, "mode": m.mode, "bids": m.book.depth("buy"), "asks": m.book.depth("sell")}

    # ------------------------------------------------------------------ admin routes

    def _h_mode(self, req: Request) -> Any:
        body = req.json()
        mode = body.get("mode")
        if mode not in MODES:
            raise HttpError(400, f"mode must be one of {', '.join(MODES)}")
        markets = body.get("markets")
        if markets is None:
            markets = list(self.market_names)
        if not isinstance(markets, list) or not markets or not all(isinstance(m, str) for m in markets):
            raise HttpError(400, "markets must be a non-empty list of market names (omit it for all markets)")
        for name in markets:
            if name not in self.market_names:
                raise HttpError(404, f"unknown market {name!r}", markets=self.market_names)
        markets = list(dict.fromkeys(markets))
        with self.fence.admit(body), self._seq_lock:
            self._require_primary()
            self._commit({"type": "mode", "mode": mode, "markets": markets})
            with self._state_lock:
                return {"mode": mode, "markets": markets, "seq": self._applied,
                        "market_modes": {n: m.mode for n, m in self.markets.items()}}

    def _ha_answer(self) -> dict[str, Any]:
        return {"ha_role": self._role, "seq": self._applied, "state_hash": self._state_hash(), "term": self._term}

    def _h_step_down(self, req: Request) -> Any:
        with self.fence.admit(req.json()), self._seq_lock:
            if self._role == "primary":
                if self._push is not None:
                    self._sync_peer(None)  # best effort: hand the standby every entry before it may be promoted
                self._become_standby(self._term, "asked to step down")
            return self._ha_answer()

    def _h_promote(self, req: Request) -> Any:
        body = req.json()
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise HttpError(400, "force must be true or false")
        with self.fence.admit(body), self._seq_lock:
            if self._role == "primary":
                return self._ha_answer()
            info = self._peer_get(self._journal_seq() + 1, 0) if self._pull is not None else None
            if info is not None and info.get("role") == "primary" and not force:
                raise HttpError(409, "peer is still primary; step it down first", peer=self.peer_name,
                                peer_term=info.get("term"))
            if info is not None:
                self._reconcile(info)
            if self._diverged:
                LOG.warning("promoted while a resync was pending; this node's journal is now authoritative")
                self._diverged = False
            self._apply_pending()
            term = max(self._term, int(info.get("term", 0)) if info else 0) + 1
            self._set_role("primary", term)
            self._repl_state = "degraded"
            self._next_push = 0.0
            self._peer_seq = None
            LOG.warning("promoted to primary in term %d at seq %d", term, self._applied)
            self.history.observe()
        self._wake.set()
        return self._ha_answer()

    def _h_state_hash(self, req: Request) -> Any:
        """State hash at journal sequence ``seq`` (default: the last applied one).

        Computed by replaying our own journal up to ``seq`` into a scratch engine with this
        release's apply code, so a peer running another release can be compared at the same
        sequence while orders keep flowing. The scratch engine is kept as a checkpoint: the
        health gate asks for growing sequences, and each ask only replays the new entries.
        """
        assert self.journal is not None
        with self._state_lock:
            applied, live_hash = self._applied, self._state_hash()
        raw = req.query.get("seq")
        try:
            seq = applied if raw is None else int(raw)
        except ValueError as e:
            raise HttpError(400, f"seq must be an integer, got {raw!r}") from e
        if seq < 0:
            raise HttpError(400, f"seq must be >= 0, got {seq}")
        if seq > applied:
            raise HttpError(409, f"seq {seq} is beyond this node's last applied seq {applied}; "
                            f"ask for seq <= {applied}", seq=applied)
        if seq == applied:
            return {"seq": seq, "state_hash": live_hash}
        records = self.journal.records  # a snapshot reference: replace() swaps the list, append extends it
        if seq > len(records):  # the journal was replaced (resync) since we read the applied seq
            raise HttpError(409, f"seq {seq} is beyond this node's journal ({len(records)} entries); retry",
                            seq=len(records))
        with self._replay_lock:
            engine: ScratchEngine | None = None
            if self._checkpoint is not None:
                last_hash, engine = self._checkpoint
                at = engine._applied
                # Reuse the checkpoint only when it is a prefix of the journal we replay now.
                if at > seq or (at and records[at - 1].get("hash") != last_hash):
                    engine = None
            if engine is None:
                engine = ScratchEngine(self.market_names, self.faulty)
            for e in records[engine._applied:seq]:
                engine._apply(e)
            self._checkpoint = (records[seq - 1].get("hash", "") if seq else "", engine)
            return {"seq": seq, "state_hash": engine._state_hash()}

    # ------------------------------------------------------------------ replication routes

    def _h_append(self, req: Request) -> Any:
        body = req.json()
        term, seq = _int(body.get("term")), _int(body.get("seq"))
        entries = body.get("entries") or []
        sender = str(body.get("from") or "")
        last_hash = body.get("hash", "")
        if term is None or seq is None or not isinstance(entries, list) or not isinstance(last_hash, str):
            raise HttpError(400, "append needs term (int), seq (int), hash (str) and entries (list)")
        # Rejections that need no lock, so two primaries calling each other cannot deadlock.
        if self._role == "primary" and not self._peer_wins(term, sender):
            return 409, {"error": "primary", "term": self._term, "seq": self._journal_seq()}
        if term < self._term:
            return 409, {"error": "stale term", "term": self._term, "seq": self._journal_seq()}
        if not self._seq_lock.acquire(timeout=APPEND_LOCK_WAIT_S):
            raise HttpError(503, "busy", seq=self._journal_seq())
        try:
            if self._role == "primary":
                if not self._peer_wins(term, sender):
                    return 409, {"error": "primary", "term": self._term, "seq": self._journal_seq()}
                self._become_standby(term, f"{sender or 'peer'} is primary in term {term}")
            if term < self._term:
                return 409, {"error": "stale term", "term": self._term, "seq": self._journal_seq()}
            if term > self._term:
                self._set_role("standby", term)
            self._peer_contact = time.monotonic()
            self._peer_is_primary = True
            self._peer_seq = seq
            if self._diverged:
                return 409, {"error": "diverged", "seq": self._journal_seq(), "term": self._term}
            outcome = self._accept(entries)
            last = self._journal_seq()
            if outcome == "ok":
                if last < seq:
                    outcome = "gap"
                elif last > seq or self._last_hash() != last_hash:
                    outcome = "diverged"
            if outcome == "diverged":
                self._mark_diverged(f"primary {sender} at seq {seq} does not continue our journal at seq {last}")
                return 409, {"error": "diverged", "seq": last, "term": self._term}
            if outcome == "gap":
                return 409, {"error": "gap", "seq": last, "term": self._term}
            return {"seq": last, "term": self._term}
        finally:
            self._seq_lock.release()

    def _h_journal(self, req: Request) -> Any:
        assert self.journal is not None
        try:
            from_seq = int(req.query.get("from_seq", "1"))
            limit = int(req.query.get("limit", str(PAGE)))
        except ValueError as e:
            raise HttpError(400, "from_seq and limit must be integers") from e
        if from_seq < 1 or limit < 0:
            raise HttpError(400, "from_seq must be >= 1 and limit >= 0")
        records = self.journal.records  # a snapshot reference: replace() swaps the list, append extends it
        n = len(records)
        start = from_seq - 1
        entries = records[start:min(start + min(limit, MAX_PAGE), n)] if start < n else []
        if from_seq == 1:
            prev_hash: str | None = ""
        elif from_seq - 2 < n:
            prev_hash = records[from_seq - 2]["hash"]
        else:
            prev_hash = None
        return {
            "name": self.name, "role": self._role, "term": self._term, "serving": self._started,
            "seq": n, "last_term": int(records[n - 1].get("term", 0)) if n else 0,
            "prev_hash": prev_hash, "entries": entries,
        }

    # ------------------------------------------------------------------ status, readiness, metrics

    def _following(self) -> tuple[bool, str]:
        if self._pull is None:
            return False, "no peer configured"
        if self._diverged:
            return False, "journal diverged from the primary's; resyncing"
        if not self._peer_is_primary or time.monotonic() - self._peer_contact > CONTACT_FRESH_S:
            return False, f"not following: primary {self.peer_name} unreachable or not primary"
        if self._peer_seq is None or self._applied < self._peer_seq - READY_LAG:
            return False, f"catching up: seq {self._applied} of {self._peer_seq}"
        return True, "standby, following the primary"

    def _replication_state(self) -> str:
        if self._role == "primary":
            return self._repl_state
        return "following" if self._following()[0] else "catching_up"

    def ha_role(self) -> str | None:
        return self._role

    def component_readiness(self, role: str | None) -> tuple[bool, str]:
        if not self._started:
            return False, "replaying the journal"
        if self._role == "primary":
            return True, f"primary, replication {self._repl_state}"
        if role == "primary":
            return False, "standby"
        return self._following()

    def status(self) -> dict[str, Any]:
        st = self.base_status()
        with self._state_lock:
            seq, state_hash = self._applied, self._state_hash()
            modes = {n: m.mode for n, m in self.markets.items()}
        st.update({
            "ha_role": self._role,
            "term": self._term,
            "shard": self.shard,
            "markets": list(self.market_names),
            "market_modes": modes,
            "seq": seq,
            "state_hash": state_hash,
            "replication": {"peer": self.peer_name, "state": self._replication_state(), "peer_seq": self._peer_seq},
            "fence": self.fence.highest(),
        })
        return st

    def extra_metrics(self) -> list[str]:
        with self._state_lock:
            seq, total = self._applied, self._orders_total
            modes = {n: m.mode for n, m in self.markets.items()}
        lines = [
            "# HELP exchange_last_applied_sequence Journal sequence applied to the books.",
            "# TYPE exchange_last_applied_sequence gauge",
            f"exchange_last_applied_sequence {seq}",
            "# HELP exchange_ha_primary 1 on the shard's serving primary, 0 on the standby.",
            "# TYPE exchange_ha_primary gauge",
            f"exchange_ha_primary {1 if self._role == 'primary' else 0}",
            "# HELP exchange_orders_total Orders accepted into the journal.",
            "# TYPE exchange_orders_total counter",
            f"exchange_orders_total {total}",
            "# HELP exchange_replication_peer_sequence Last journal sequence known of the peer.",
            "# TYPE exchange_replication_peer_sequence gauge",
            f"exchange_replication_peer_sequence {self._peer_seq if self._peer_seq is not None else -1}",
            "# HELP exchange_market_mode 1 for the mode each market is in.",
            "# TYPE exchange_market_mode gauge",
        ]
        for name in sorted(modes):
            for mode in MODES:
                lines.append(f'exchange_market_mode{{market="{name}",mode="{mode}"}} {int(modes[name] == mode)}')
        return lines
