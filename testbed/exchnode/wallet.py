"""Wallet-signer node: a durable withdrawal queue, a ledger, and simulated blockchains.

State lives in one journal (``<data_dir>/journal.jsonl``), replayed on start:

* ``deposit``   ``{chain, amount, source}``: credits the ledger (``initial_deposits`` once per chain);
* ``request``   ``{withdrawal_id, client_withdrawal_id, chain, address, amount}``: a queued withdrawal,
  acknowledged to the client only once this record is durable;
* ``signing``   ``{withdrawal_id}``: the processor took the head of the queue and is signing it;
* ``processed`` ``{withdrawal_id, height}``: its transaction is on the chain; the ledger is debited;
* ``pause`` / ``resume``: the operator's pause state, so a restart keeps a paused node paused.

The chains are files outside the node root, ``<chain_dir>/<CHAIN>.jsonl``, one transaction per
line; they stand for the external blockchains and are the source of truth for what was
broadcast. Broadcasting takes an exclusive ``flock`` on the chain file (several wallet nodes may
share a chain), re-reads the chain and appends only when the withdrawal is not on it already,
so a withdrawal is never broadcast twice: a withdrawal left in ``signing`` by a crash is marked
processed on the next start when its transaction is on the chain, and re-signed otherwise.

The ledger balance is derived from the journal by the release's ledger code (deposits minus the
debit of every processed withdrawal). The ``ledger-mismatch`` fault is that code debiting the
wrong amount; the journal itself stays correct, so rolling back to a good release reconciles.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .common import LOG, Fence, HttpError, Journal, Node, Request, canonical_hash

CHAIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
CLIENT_ID_RE = re.compile(r"^[^\s/]{1,128}$")
MAX_ADDRESS = 256


@dataclass
class ChainView:
    """What this node has scanned of one chain file ("synced" up to ``height``)."""

    path: str
    offset: int = 0  # bytes of complete lines consumed
    height: int = 0  # complete lines consumed
    txs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # withdrawal_id -> tx lines
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        self.offset, self.height, self.txs = 0, 0, {}


def _count_lines(path: str) -> int:
    """Complete lines in ``path`` (a torn last line is not a transaction)."""
    n = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                n += chunk.count(b"\n")
    except FileNotFoundError:
        return 0
    return n


class WalletNode(Node):
    component = "wallet-signer"
    ha_sample_s = 1.0  # readiness reads every chain file: not ten times a second for a history

    def __init__(self, config: dict[str, Any], release: Any) -> None:
        super().__init__(config, release)
        self.chains: list[str] = list(config.get("chains") or ["BTC", "ETH"])
        for chain in self.chains:
            if not isinstance(chain, str) or not CHAIN_RE.match(chain):
                raise SystemExit(f"node config: chain name {chain!r} is invalid; use letters, digits, '_' or '-'")
        self.data_dir: str = config["data_dir"]
        self.chain_dir: str = config.get("chain_dir") or os.path.join(self.data_dir, "chains")
        self.fsync = bool(config.get("fsync", True))
        self.signing_s = float(config.get("signing_ms", 20)) / 1000.0
        self.initial_deposits: dict[str, int] = dict(config.get("initial_deposits") or {})

        self._lock = threading.Lock()  # state; always taken before a ChainView lock, never inside one
        self._cv = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._views: dict[str, ChainView] = {}
        self._views_lock = threading.Lock()
        self.journal: Journal | None = None
        self._worker: threading.Thread | None = None
        self._replayed = False
        self._synced = False
        self._closed = False

        self._seq = 0
        self._paused = False
        self._withdrawals: dict[str, dict[str, Any]] = {}  # withdrawal_id -> record
        self._by_client_id: dict[str, str] = {}
        self._queue: deque[str] = deque()  # queued + signing, in request order
        self._deposits: dict[str, int] = {c: 0 for c in self.chains}
        self._balance: dict[str, int] = {c: 0 for c in self.chains}
        self._pending: dict[str, int] = {c: 0 for c in self.chains}  # amount reserved by the queue
        self._initial_done: set[str] = set()
        self._requests = 0
        self._processed = 0
        # the rollout lease's fencing tokens, one scope per chain, for pause and resume (see Fence)
        self.fence = Fence(self.data_dir, [f"chain-{c}" for c in self.chains], self.name)

        r = self.router
        r.add("POST", "/chains/{chain}/withdrawals", self._post_withdrawal, auth="none", kind="client")
        r.add("GET", "/chains/{chain}/withdrawals", self._list_withdrawals, auth="none", kind="client")
        r.add(
            "GET",
            "/chains/{chain}/withdrawals/{client_withdrawal_id}",
            self._get_withdrawal,
            auth="none",
            kind="client",
        )
        r.add("POST", "/v1/withdrawals/pause", self._pause, auth="admin", kind="admin")
        r.add("POST", "/v1/withdrawals/resume", self._resume, auth="admin", kind="admin")
        r.add("GET", "/v1/ledger/reconcile", self._reconcile, auth="admin", kind="admin")

    # ------------------------------------------------------------------ ledger code

    def _debit(self, amount: int) -> int:
        """What the ledger is debited for a processed withdrawal of ``amount``."""
        if self.release.fault == "ledger-mismatch":
            return amount + 1  # the release's bug: off by one on every debit
        return amount

    def _apply(self, rec: dict[str, Any]) -> None:
        """Apply one journal record to the in-memory state (replay and live share this)."""
        kind = rec["type"]
        if kind == "deposit":
            chain, amount = rec["chain"], int(rec["amount"])
            self._deposits[chain] = self._deposits.get(chain, 0) + amount
            self._balance[chain] = self._balance.get(chain, 0) + amount
            if rec.get("source") == "initial_deposits":
                self._initial_done.add(chain)
        elif kind == "request":
            wid, chain, amount = rec["withdrawal_id"], rec["chain"], int(rec["amount"])
            self._withdrawals[wid] = {
                "withdrawal_id": wid,
                "client_withdrawal_id": rec["client_withdrawal_id"],
                "chain": chain,
                "address": rec["address"],
                "amount": amount,
                "status": "queued",
                "seq": rec["seq"],
                "height": None,
            }
            self._by_client_id[rec["client_withdrawal_id"]] = wid
            self._queue.append(wid)
            self._pending[chain] = self._pending.get(chain, 0) + amount
            self._requests += 1
        elif kind == "signing":
            self._withdrawals[rec["withdrawal_id"]]["status"] = "signing"
        elif kind == "processed":
            w = self._withdrawals[rec["withdrawal_id"]]
            if w["status"] == "processed":
                LOG.error("journal: withdrawal %s processed twice; ignoring the second record", w["withdrawal_id"])
                return
            w["status"], w["height"] = "processed", rec.get("height")
            if w["withdrawal_id"] in self._queue:
                self._queue.remove(w["withdrawal_id"])
            chain = w["chain"]
            self._pending[chain] = self._pending.get(chain, 0) - w["amount"]
            self._balance[chain] = self._balance.get(chain, 0) - self._debit(w["amount"])
            self._processed += 1
        elif kind == "pause":
            self._paused = True
        elif kind == "resume":
            self._paused = False
        else:
            LOG.warning("journal: unknown record type %r at seq %s; ignored", kind, rec.get("seq"))

    def _append(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Make ``rec`` durable, then apply it. Caller holds ``self._lock``."""
        if self._closed or self.journal is None:
            raise HttpError(503, f"{self.name} is shutting down")
        rec = {"seq": self._seq + 1, **rec}
        self.journal.append([rec])
        self._seq = rec["seq"]
        self._apply(rec)
        return rec

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        os.makedirs(self.chain_dir, exist_ok=True)
        os.makedirs(self.data_dir, exist_ok=True)
        self.fence.load()
        self.journal = Journal(os.path.join(self.data_dir, "journal.jsonl"), fsync=self.fsync)
        with self._lock:
            for rec in self.journal.records:
                self._apply(rec)
                self._seq = max(self._seq, int(rec.get("seq", 0)))
            for chain in self.chains:
                amount = self.initial_deposits.get(chain, 0)
                if chain in self._initial_done:
                    continue
                if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
                    LOG.warning("initial_deposits[%s] = %r is not a non-negative integer; ignored", chain, amount)
                elif amount > 0:
                    self._append({"type": "deposit", "chain": chain, "amount": amount, "source": "initial_deposits"})
            for chain in self.initial_deposits:
                if chain not in self.chains:
                    LOG.warning("initial_deposits names chain %s, which this node does not serve; ignored", chain)
            self._replayed = True
            LOG.info(
                "journal replayed: seq=%d withdrawals=%d queued=%d paused=%s",
                self._seq,
                len(self._withdrawals),
                len(self._queue),
                self._paused,
            )
        self._worker = threading.Thread(target=self._run, name="withdrawal-processor", daemon=True)
        self._worker.start()

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10)
        with self._lock:
            self._closed = True
            if self.journal is not None:
                self.journal.close()

    # ------------------------------------------------------------------ chains

    def _view(self, chain: str) -> ChainView:
        with self._views_lock:
            view = self._views.get(chain)
            if view is None:
                view = self._views[chain] = ChainView(os.path.join(self.chain_dir, f"{chain}.jsonl"))
            return view

    @staticmethod
    def _scan(view: ChainView) -> None:
        """Read the complete lines appended since the last scan. Caller holds ``view.lock``."""
        try:
            size = os.path.getsize(view.path)
        except FileNotFoundError:
            size = 0
        if size < view.offset:
            LOG.warning("chain file %s shrank (%d < %d bytes); rescanning it", view.path, size, view.offset)
            view.reset()
        if size == view.offset:
            return
        with open(view.path, "rb") as fh:
            fh.seek(view.offset)
            data = fh.read(size - view.offset)
        end = data.rfind(b"\n") + 1
        for line in data[:end].split(b"\n")[:-1]:
            view.height += 1
            try:
                tx = json.loads(line)
            except ValueError:
                LOG.warning("chain file %s: line %d is not JSON; skipped", view.path, view.height)
                continue
            if isinstance(tx, dict) and isinstance(tx.get("withdrawal_id"), str):
                view.txs.setdefault(tx["withdrawal_id"], []).append({**tx, "height": view.height})
        view.offset += end

    def _sync(self, chain: str) -> ChainView:
        view = self._view(chain)
        with view.lock:
            self._scan(view)
        return view

    def _broadcast(self, w: dict[str, Any]) -> int:
        """Put ``w`` on its chain unless it is there already; return its height.

        Holds an exclusive flock on the chain file, so the check and the append are atomic
        against every other node writing the same chain.
        """
        view = self._view(w["chain"])
        with view.lock:
            fd = os.open(view.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._scan(view)
                size = os.fstat(fd).st_size
                if size > view.offset:
                    # A writer died mid-line (it no longer holds the lock): that tx never happened.
                    LOG.warning("chain file %s: cutting a torn tail at byte %d", view.path, view.offset)
                    os.ftruncate(fd, view.offset)
                existing = view.txs.get(w["withdrawal_id"])
                if existing:
                    LOG.warning(
                        "withdrawal %s is already on chain %s at height %d; not broadcasting again",
                        w["withdrawal_id"],
                        w["chain"],
                        existing[0]["height"],
                    )
                    return int(existing[0]["height"])
                height = view.height + 1
                tx = {
                    "withdrawal_id": w["withdrawal_id"],
                    "client_withdrawal_id": w["client_withdrawal_id"],
                    "amount": w["amount"],
                    "address": w["address"],
                    "height": height,
                    "node": self.name,
                }
                line = json.dumps(tx, sort_keys=True).encode() + b"\n"
                os.write(fd, line)
                if self.fsync:
                    os.fsync(fd)
                view.offset += len(line)
                view.height = height
                view.txs.setdefault(w["withdrawal_id"], []).append(tx)
                return height
            finally:
                os.close(fd)  # also releases the flock

    def _heights(self) -> tuple[dict[str, int], dict[str, int]]:
        """(chain_height, synced_height) per served chain."""
        chain_h, synced_h = {}, {}
        for chain in self.chains:
            view = self._view(chain)
            h = _count_lines(view.path)
            if self._synced:
                self._sync(chain)
            synced_h[chain] = view.height
            chain_h[chain] = max(h, view.height)
        return chain_h, synced_h

    # ------------------------------------------------------------------ processor

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._synced:
                    self._initial_sync()
                else:
                    self._process_one()
            except Exception:  # noqa: BLE001 - the processor retries, it does not die
                LOG.exception("withdrawal processor failed; retrying in 1 s")
                self._stop.wait(1.0)

    def _initial_sync(self) -> None:
        """Scan every chain, then settle withdrawals a crash left in ``signing``."""
        with self._lock:
            chains = set(self.chains) | {self._withdrawals[wid]["chain"] for wid in self._queue}
        for chain in sorted(chains):
            self._sync(chain)
        with self._lock:
            for wid in list(self._queue):
                w = self._withdrawals[wid]
                if w["status"] != "signing":
                    continue
                view = self._sync(w["chain"])
                txs = view.txs.get(wid)
                if txs:
                    LOG.info(
                        "recovery: %s was broadcast at height %d before the crash; marking it processed",
                        wid,
                        txs[0]["height"],
                    )
                    self._append({"type": "processed", "withdrawal_id": wid, "height": txs[0]["height"]})
                else:
                    LOG.info("recovery: %s is not on chain %s; it will be signed again", wid, w["chain"])
                    w["status"] = "queued"
            self._synced = True
            LOG.info("chains synced: %s", {c: self._view(c).height for c in self.chains})
            self._cv.notify_all()

    def _process_one(self) -> None:
        with self._lock:
            while not self._stop.is_set() and not self._has_work():
                self._cv.wait(timeout=0.5)
            if self._stop.is_set():
                return
            w = self._withdrawals[self._queue[0]]
            if w["status"] != "signing":
                self._append({"type": "signing", "withdrawal_id": w["withdrawal_id"]})
        if self._stop.wait(self.signing_s):
            return  # abandoned mid-signing: the next start settles it against the chain
        with self._lock:
            if self._closed:
                return
            height = self._broadcast(w)
            self._append({"type": "processed", "withdrawal_id": w["withdrawal_id"], "height": height})
            self._cv.notify_all()

    def _has_work(self) -> bool:
        if not self._queue:
            return False
        # Paused: nothing new is taken off the queue, but the one in flight completes.
        return not self._paused or self._withdrawals[self._queue[0]]["status"] == "signing"

    # ------------------------------------------------------------------ views

    def _served(self, chain: str) -> str:
        if chain not in self.chains:
            raise HttpError(
                404,
                f"chain {chain} is not served by {self.name}; it serves {', '.join(self.chains)}",
                chains=self.chains,
            )
        return chain

    def _counts(self) -> dict[str, int]:
        in_flight = sum(1 for wid in self._queue if self._withdrawals[wid]["status"] == "signing")
        return {"queued": len(self._queue) - in_flight, "in_flight": in_flight, "processed": self._processed}

    def _state_hash(self) -> str:
        return canonical_hash(
            {
                "balances": self._balance,
                "deposits": self._deposits,
                "queue": [[wid, self._withdrawals[wid]["status"]] for wid in self._queue],
                "processed": self._processed,
                "paused": self._paused,
            }
        )

    def status(self) -> dict[str, Any]:
        base = self.base_status()
        chain_h, synced_h = self._heights()
        with self._lock:
            counts = self._counts()
            doc = {
                "ha_role": "active",
                "chains": list(self.chains),
                "seq": self._seq,
                "state_hash": self._state_hash(),
                "withdrawals": "paused" if self._paused else "running",
                **counts,
                "chain_height": chain_h,
                "synced_height": synced_h,
            }
        # outside self._lock: a fenced pause holds the fence, then takes self._lock
        return {**base, **doc, "fence": self.fence.highest()}

    def ha_role(self) -> str | None:
        return "active"

    def component_readiness(self, role: str | None) -> tuple[bool, str]:
        # Wallet signers are all active: role=primary means the same as no role.
        if not self._replayed:
            return False, "replaying journal"
        if not self._synced:
            return False, "syncing"
        chain_h, synced_h = self._heights()
        behind = [c for c in self.chains if synced_h[c] < chain_h[c]]
        if behind:
            return False, "syncing"
        return True, "ready"

    def extra_metrics(self) -> list[str]:
        with self._lock:
            counts = self._counts()
            paused = 1 if self._paused else 0
        return [
            "# HELP exchange_withdrawals_queued Withdrawals waiting in the queue (not yet signing).",
            "# TYPE exchange_withdrawals_queued gauge",
            f"exchange_withdrawals_queued {counts['queued']}",
            "# HELP exchange_withdrawals_processed_total Withdrawals signed and broadcast.",
            "# TYPE exchange_withdrawals_processed_total gauge",
            f"exchange_withdrawals_processed_total {counts['processed']}",
            "# HELP exchange_withdrawals_paused 1 while withdrawal processing is paused.",
            "# TYPE exchange_withdrawals_paused gauge",
            f"exchange_withdrawals_paused {paused}",
        ]

    # ------------------------------------------------------------------ handlers

    def _post_withdrawal(self, req: Request) -> dict[str, Any]:
        chain = self._served(req.params["chain"])
        body = req.json()
        missing = [k for k in ("client_withdrawal_id", "address", "amount") if k not in body]
        if missing:
            raise HttpError(
                400,
                f"missing field(s): {', '.join(missing)}; a withdrawal needs client_withdrawal_id, address and amount",
            )
        cwid, address, amount = body["client_withdrawal_id"], body["address"], body["amount"]
        if not isinstance(cwid, str) or not CLIENT_ID_RE.match(cwid):
            raise HttpError(400, "client_withdrawal_id must be a string of 1-128 characters without spaces or '/'")
        if not isinstance(address, str) or not address.strip() or len(address) > MAX_ADDRESS:
            raise HttpError(400, f"address must be a non-empty string of at most {MAX_ADDRESS} characters")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise HttpError(400, f"amount must be a positive integer, got {amount!r}")
        with self._lock:
            existing = self._by_client_id.get(cwid)
            if existing is not None:
                return {**self._withdrawals[existing], "replayed": True}
            available = self._balance.get(chain, 0) - self._pending.get(chain, 0)
            if amount > available:
                raise HttpError(
                    409,
                    f"insufficient balance on {chain}: {amount} requested, {available} available",
                    chain=chain,
                    available=available,
                )
            wid = f"{self.name}:{chain}:{self._requests + 1}"
            self._append(
                {
                    "type": "request",
                    "withdrawal_id": wid,
                    "client_withdrawal_id": cwid,
                    "chain": chain,
                    "address": address,
                    "amount": amount,
                }
            )
            self._cv.notify_all()
            return dict(self._withdrawals[wid])

    def _list_withdrawals(self, req: Request) -> dict[str, Any]:
        chain = self._served(req.params["chain"])
        with self._lock:
            items = [dict(w) for w in self._withdrawals.values() if w["chain"] == chain]
        return {"chain": chain, "withdrawals": items}

    def _get_withdrawal(self, req: Request) -> dict[str, Any]:
        chain = self._served(req.params["chain"])
        cwid = req.params["client_withdrawal_id"]
        with self._lock:
            wid = self._by_client_id.get(cwid)
            w = self._withdrawals.get(wid) if wid else None
            if w is None or w["chain"] != chain:
                raise HttpError(404, f"no withdrawal with client_withdrawal_id {cwid} on chain {chain}")
            return dict(w)

    def _pause_answer(self) -> dict[str, Any]:
        counts = self._counts()
        return {
            "withdrawals": "paused" if self._paused else "running",
            "in_flight": counts["in_flight"],
            "queued": counts["queued"],
        }

    def _pause(self, req: Request) -> dict[str, Any]:
        with self.fence.admit(req.json()), self._lock:
            if not self._paused:
                self._append({"type": "pause"})
                LOG.info("withdrawals paused")
            return self._pause_answer()

    def _resume(self, req: Request) -> dict[str, Any]:
        with self.fence.admit(req.json()), self._lock:
            if self._paused:
                self._append({"type": "resume"})
                LOG.info("withdrawals resumed")
                self._cv.notify_all()
            return self._pause_answer()

    def _reconcile(self, req: Request) -> dict[str, Any]:
        if not self._synced:
            raise HttpError(503, f"{self.name} is still syncing its chains; reconcile once it is ready")
        chains: dict[str, Any] = {}
        balanced = True
        with self._lock:  # processed records and chain lines change together under this lock
            for chain in self.chains:
                view = self._sync(chain)
                with view.lock:
                    mine = {
                        wid: list(txs)
                        for wid, txs in view.txs.items()
                        if wid in self._withdrawals or any(t.get("node") == self.name for t in txs)
                    }
                processed = [
                    w for w in self._withdrawals.values() if w["chain"] == chain and w["status"] == "processed"
                ]
                on_chain_amount = sum(int(t.get("amount", 0)) for txs in mine.values() for t in txs)
                deposits = self._deposits.get(chain, 0)
                ledger = self._balance.get(chain, 0)
                expected = deposits - on_chain_amount
                double = sorted(wid for wid, txs in mine.items() if len(txs) > 1)
                missing = sorted(w["withdrawal_id"] for w in processed if w["withdrawal_id"] not in mine)
                ok = ledger == expected and not double and not missing
                balanced = balanced and ok
                chains[chain] = {
                    "balanced": ok,
                    "deposits": deposits,
                    "processed_withdrawals": len(processed),
                    "processed_amount": sum(w["amount"] for w in processed),
                    "ledger_balance": ledger,
                    "expected_balance": expected,
                    "chain_txs": sum(len(txs) for txs in mine.values()),
                    "chain_amount": on_chain_amount,
                    "double_processed": double,
                    "missing_on_chain": missing,
                }
        return {"balanced": balanced, "chains": chains}
