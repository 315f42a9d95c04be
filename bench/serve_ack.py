"""Benchmark how fast the chatops service acknowledges Slack's slash commands while a rollout runs.

Slack gives an app 3 s to answer a slash command and shows the user an error after that; we aim for a
p99 under 300 ms. The bench brings up a testbed fleet (2 shards x primary/standby + 1 wallet, HAProxy) in
a temporary folder on 127.64.0.0/16 (--net), writes the service's config with the chatops tests' helper
(tests/serve/chat.py: four identities, a signing secret, an SQLite run store, a stand-in for Slack's
response_url on 127.0.0.1) and starts the real service, ``exchpatch serve`` under uvicorn, as a subprocess.

After a warm-up (one of each command, their answers awaited, the service's read cache left to expire),
in one or two rounds:

  idle     (unless --no-idle) no run in flight: the reference;
  rollout  a deploy of matching-engine-1.4.3 started through the REST API (POST /v1/deployments) with a
           canary bake of --bake seconds, measured once it holds its lease (past the preflight; ansible
           works on the same cores as the service).

Each round sends --requests signed ``/patch`` commands at once (from one asyncio event loop, each on a
connection of its own, timed from its connect to the end of its answer): an equal mix of ``status``,
``plan``, ``history`` (viewer carol; each answered at once and read through a playbook in the background,
whose answer is posted to the command's response_url), ``help``, and ``deploy`` by operator alice, which
must be refused: in the rollout round ``deploy matching-engine-1.4.4`` while 1.4.3 holds the component
(``scope_held``), in the idle round a patch the catalog does not have (``unknown_patch``). An error is
any answer that is not 200 with the expected JSON (a read refused, a deploy not refused with its code), or
no answer within 30 s.

Prints, per round and command: n, p50, p90, p99 and max of the acknowledgement (the HTTP round trip the
client sees, in ms) and errors. Where the time goes: "alone p50" is the same command sent five times one
after the other in the same round (its own cost in the service); "healthz (control)" is as many GET
/healthz sent at once (what uvicorn, the loopback and this client cost at that concurrency); the
service's own view is its ``exchpatch_serve_ack_seconds`` histogram over the burst (count, mean, share
within 300 ms: from the Slack handler's start, so without the time a request waited for the event loop),
the CPU time the service's process used during the burst (all its threads, from /proc/<pid>/stat) and how
busy the machine's CPUs were meanwhile (/proc/stat), beside the service CPU of the healthz burst.
Last, how long the read answers took to reach the response URL. ``--json`` prints one document instead::

    {"machine": {"nproc", "cpu", "date"}, "fleet": {"shards", "wallets", "nodes", "up_s"},
     "target_p99_ms", "rounds": [{"phase", "rollout_running", "ack_ms": {<command>|"all"|"healthz (control)":
     {"n", "p50", "p90", "p99", "max", "errors", "alone_p50"}}, "server": {"count", "mean_ms", "within_300ms"},
     "burst": {"wall_ms", "service_cpu_ms", "machine_busy", "healthz_service_cpu_ms"},
     "answers_s": {<command>: {"n", "p50", "max", "missing"}}, "errors": [first few]}]}

The rollout is canceled after the last round and the fleet stopped and its folder removed at the end, also
on an error or Ctrl-C. Never run by CI; no test asserts on timing. Exit status: 0 when every command was
answered as expected, 1 otherwise, 130 when interrupted.

    .venv/bin/python bench/serve_ack.py [--requests 50] [--net 64] [--shards 2] [--wallets 1] [--bake 30]
                                        [--no-idle] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# the testbed and the chatops tests' helpers are the checkout's (the driver's wheel ships neither)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testbed import fleet as tb
from testbed.release import build_release
from tests.serve.chat import Receiver, Service, command_body, make_keys, slack_headers, write_config

COMPONENT = "matching-engine"
COMMANDS = ("status", "plan", "history", "help", "deploy")
ALONE_ORDER = ("help", "deploy", "status", "plan", "history")  # the reads last: each starts a playbook
READS = ("status", "plan", "history")
USERS = {"status": "U0CAROL", "plan": "U0CAROL", "history": "U0CAROL", "help": "U0CAROL", "deploy": "U0ALICE"}
TARGET_P99_MS = 300
ALONE_REPEAT = 5
READ_CACHE_S = 5  # exchpatch/serve/runs.py: a read's answer is shared this long
ROLLOUT, HELD = "1.4.3", "1.4.4"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """The bench could not measure; the message says what was seen."""


@dataclass
class Sample:
    command: str
    hook: str  # the response_url's path on the receiver
    sent: float = 0.0  # time.monotonic() when the request went out
    ms: float | None = None
    error: str | None = None
    answered_s: float | None = None  # reads: when the answer reached the response URL, after ``sent``


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def expected(command: str, phase: str, status: int, body: Any) -> str | None:
    """What is wrong with an answer (None: it is what Slack should get)."""
    if status != 200 or not isinstance(body, dict):
        return f"{command}: HTTP {status} {str(body)[:200]}"
    if command == "deploy":
        want = "scope_held" if phase == "rollout" else "unknown_patch"
        return None if body.get("refused") == want else f"deploy: expected refused {want}, got {str(body)[:200]}"
    return f"{command}: refused {body['refused']}: {body.get('text', '')[:200]}" if "refused" in body else None


async def _burst(port: int, requests: list[tuple[str, str, bytes, dict[str, str]]]
                 ) -> list[tuple[float | None, int, Any, str | None]]:
    """Send every request at once from one event loop, each on a connection of its own with a few lines of
    HTTP/1.1 (a full client library costs more CPU per request than the service's handler on this machine:
    it would measure itself); each is timed from its connect to the end of its answer: (ms, status, JSON or
    text, error)."""

    async def one(method: str, path: str, body: bytes, headers: dict[str, str]
                  ) -> tuple[float | None, int, Any, str | None]:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        data = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{head}"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 30)  # the server closes after its answer
            ms = (time.perf_counter() - t0) * 1000
            writer.close()
            status_line, _crlf, rest = raw.partition(b"\r\n")
            payload = rest.partition(b"\r\n\r\n")[2]
            status = int(status_line.split()[1])
        except (OSError, TimeoutError, IndexError, ValueError) as e:
            return None, 0, None, f"{type(e).__name__}: {e}"
        try:
            return ms, status, json.loads(payload), None
        except ValueError:
            return ms, status, payload.decode(errors="replace"), None

    return await asyncio.gather(*(one(*r) for r in requests))


def fire(service: Service, phase: str, n: int, deploy_text: str) -> list[Sample]:
    """``n`` signed commands, an equal mix of COMMANDS, sent at once."""
    samples, requests = [], []
    for i in range(n):
        command = COMMANDS[i % len(COMMANDS)]
        url = service.next_hook()
        text = deploy_text if command == "deploy" else command
        body = command_body(text, user_id=USERS[command], response_url=url)
        headers = {"Content-Type": "application/x-www-form-urlencoded", **slack_headers(body, service.secret)}
        samples.append(Sample(command, "/" + url.split("/", 3)[3]))
        requests.append(("POST", "/slack/commands", body, headers))
    sent = time.monotonic()
    for sample, (ms, status, doc, error) in zip(samples, asyncio.run(_burst(service.port, requests))):
        sample.sent, sample.ms = sent, ms
        sample.error = f"{sample.command}: {error}" if error else expected(sample.command, phase, status, doc)
    return samples


def control(service: Service, n: int) -> list[float]:
    """``n`` GET /healthz sent at once: what uvicorn, the loopback and this client cost at that concurrency (ms)."""
    answers = asyncio.run(_burst(service.port, [("GET", "/healthz", b"", {})] * n))
    return [ms for ms, _status, _doc, _error in answers if ms is not None]


def alone(service: Service, phase: str, deploy_text: str, repeat: int) -> dict[str, float]:
    """Each command sent ``repeat`` times one after the other: its own cost in the service (median ms)."""
    out = {}
    for command in ALONE_ORDER:
        times = []
        for _attempt in range(repeat):
            text = deploy_text if command == "deploy" else command
            body = command_body(text, user_id=USERS[command], response_url=service.next_hook())
            t0 = time.perf_counter()
            response = service.slack_post("/slack/commands", body)
            times.append((time.perf_counter() - t0) * 1000)
            if problem := expected(command, phase, response.status_code, response.json()):
                raise BenchError(f"{phase}, one at a time: {problem}")
        out[command] = round(percentile(times, 50), 1)
    return out


def wait_answers(receiver: Receiver, samples: list[Sample], timeout: float) -> None:
    """Note when each read's answer reached its response URL (polled every 50 ms)."""
    pending = [s for s in samples if s.command in READS and s.error is None]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        now = time.monotonic()
        for s in list(pending):
            if receiver.posts_to(s.hook):
                s.answered_s = now - s.sent
                pending.remove(s)
        time.sleep(0.05)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def server_ack(service: Service) -> dict[str, float]:
    """The service's exchpatch_serve_ack_seconds histogram: count, sum, the 0.3 s bucket."""
    text = service.client.get("/metrics").text
    out = {"count": 0.0, "sum": 0.0, "le_0.3": 0.0}
    for line in text.splitlines():
        if line.startswith("exchpatch_serve_ack_seconds_count"):
            out["count"] = float(line.split()[-1])
        elif line.startswith("exchpatch_serve_ack_seconds_sum"):
            out["sum"] = float(line.split()[-1])
        elif line.startswith('exchpatch_serve_ack_seconds_bucket{le="0.3"}'):
            out["le_0.3"] = float(line.split()[-1])
    return out


def warm_up(service: Service, receiver: Receiver, deploy_text: str) -> None:
    """One of each command, its read answers awaited, then the read cache left to expire: the burst after it
    finds the service's imports done and starts its own playbooks, as a busy service would."""
    say("warming up: one of each command")
    samples = []
    for command in COMMANDS:
        url = service.next_hook()
        text = deploy_text if command == "deploy" else command
        sample = Sample(command, "/" + url.split("/", 3)[3], sent=time.monotonic())
        response = service.slack_post("/slack/commands", command_body(text, user_id=USERS[command], response_url=url))
        if problem := expected(command, "idle", response.status_code, response.json()):
            raise BenchError(f"warm-up: {problem}")
        samples.append(sample)
    wait_answers(receiver, samples, timeout=300)
    time.sleep(READ_CACHE_S + 1)


def measure(phase: str, service: Service, receiver: Receiver, n: int, deploy_text: str,
            running: Any = None) -> dict[str, Any]:
    say(f"{phase}: {n} signed /patch commands at once")
    before = server_ack(service)
    assert service.proc is not None
    cpu0, (busy0, total0), t0 = process_cpu_s(service.proc.pid), machine_cpu(), time.monotonic()
    samples = fire(service, phase, n, deploy_text)
    cpu1, (busy1, total1), t1 = process_cpu_s(service.proc.pid), machine_cpu(), time.monotonic()
    after = server_ack(service)
    still = running() if running else None
    say(f"{phase}: acknowledged; waiting for the read answers at the response URLs")
    wait_answers(receiver, samples, timeout=300)
    say(f"{phase}: {n} GET /healthz at once, then each command alone")
    cpu2 = process_cpu_s(service.proc.pid)
    healthz = control(service, n)
    healthz_cpu_ms = round((process_cpu_s(service.proc.pid) - cpu2) * 1000, 1)
    single = alone(service, phase, deploy_text, ALONE_REPEAT)
    count = after["count"] - before["count"]
    ack: dict[str, Any] = {}
    for command in (*COMMANDS, "all"):
        group = [s for s in samples if command in ("all", s.command)]
        times = [s.ms for s in group if s.ms is not None]
        ack[command] = {"n": len(group), **{f"p{q}": round(percentile(times, q), 1) for q in (50, 90, 99)},
                        "max": round(max(times), 1) if times else None,
                        "errors": sum(s.error is not None for s in group),
                        "alone_p50": single.get(command)}
    ack["healthz (control)"] = {"n": len(healthz), **{f"p{q}": round(percentile(healthz, q), 1) for q in (50, 90, 99)},
                                "max": round(max(healthz), 1), "errors": 0, "alone_p50": None}
    answers = {}
    for command in READS:
        group = [s for s in samples if s.command == command and s.error is None]
        times = [s.answered_s for s in group if s.answered_s is not None]
        answers[command] = {"n": len(times), "p50": round(percentile(times, 50), 2) if times else None,
                            "max": round(max(times), 2) if times else None, "missing": len(group) - len(times)}
    return {"phase": phase, "rollout_running": still, "ack_ms": ack,
            "burst": {"wall_ms": round((t1 - t0) * 1000, 1), "service_cpu_ms": round((cpu1 - cpu0) * 1000, 1),
                      "machine_busy": round((busy1 - busy0) / max(total1 - total0, 1), 2),
                      "healthz_service_cpu_ms": healthz_cpu_ms},
            "server": {"count": int(count),
                       "mean_ms": round((after["sum"] - before["sum"]) / count * 1000, 1) if count else None,
                       "within_300ms": round((after["le_0.3"] - before["le_0.3"]) / count, 3) if count else None},
            "answers_s": answers, "errors": [s.error for s in samples if s.error][:5]}


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def render(doc: dict[str, Any]) -> str:
    m, f = doc["machine"], doc["fleet"]
    out = [f"machine: {m['nproc']} CPUs, {m['cpu']}; {m['date']}",
           f"fleet: {f['shards']} shards x primary/standby + {f['wallets']} wallet ({f['nodes']} nodes, up in "
           f"{f['up_s']} s); target p99 < {doc['target_p99_ms']} ms", "",
           "acknowledgement of signed /patch commands sent at once (client round trip, ms)"]
    rows = [["round", "command", "n", "p50", "p90", "p99", "max", "errors", "alone p50"]]
    for r in doc["rounds"]:
        for command, a in r["ack_ms"].items():
            cells = [f"{a[k]:.1f}" if a[k] is not None else "-" for k in ("p50", "p90", "p99", "max")]
            rows.append([r["phase"], command, str(a["n"]), *cells,
                         str(a["errors"]), f"{a['alone_p50']:.1f}" if a["alone_p50"] is not None else "-"])
    out.append(table(rows))
    out += ["", "the burst as the service saw it: its handlers' own measure (exchpatch_serve_ack_seconds), the CPU "
            "the service process used (all threads) and how busy the machine was while the burst lasted"]
    srows = [["round", "rollout running", "count", "handler mean ms", "within 300 ms", "burst wall ms",
              "service CPU ms", "machine busy", "healthz burst: service CPU ms"]]
    for r in doc["rounds"]:
        s, b = r["server"], r["burst"]
        srows.append([r["phase"], {True: "yes", False: "no (ended)", None: "-"}[r["rollout_running"]],
                      str(s["count"]), str(s["mean_ms"]), f"{s['within_300ms']:.0%}" if s["within_300ms"] is not None
                      else "-", str(b["wall_ms"]), str(b["service_cpu_ms"]), f"{b['machine_busy']:.0%}",
                      str(b["healthz_service_cpu_ms"])])
    out.append(table(srows))
    out += ["", "read answers posted to the response URL (s after the command)"]
    arows = [["round", "command", "answered", "p50", "max", "missing"]]
    for r in doc["rounds"]:
        for command, a in r["answers_s"].items():
            arows.append([r["phase"], command, str(a["n"]), str(a["p50"]), str(a["max"]), str(a["missing"])])
    out.append(table(arows))
    for r in doc["rounds"]:
        for e in r["errors"]:
            out.append(f"{r['phase']} error: {e}")
    return "\n".join(out)


def run_live(service: Service, run_id: str) -> bool:
    response = service.api("GET", f"/v1/runs/{run_id}", "alice")
    return response.status_code == 200 and response.json().get("state") == "running"


def wait_for_lease(fleet: tb.Fleet, service: Service, run_id: str, timeout: float = 180) -> None:
    """Until the rollout holds its lease (its preflight is over) and is still running."""
    locks = Path(fleet.root) / "locks"
    deadline = time.monotonic() + timeout
    while not list(locks.glob("shard-*.lock")):
        if not run_live(service, run_id):
            raise BenchError(f"the rollout {run_id} ended before it took its lease: "
                             f"{service.api('GET', f'/v1/runs/{run_id}', 'alice').text[:500]}{service.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"the rollout {run_id} took no lease within {timeout:.0f} s{service.log_tail()}")
        time.sleep(0.2)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-serve-ack-"))
    rounds: list[dict[str, Any]] = []
    try:
        with Receiver() as receiver:
            say(f"starting a fleet of {args.shards} shards and {args.wallets} wallets on 127.{args.net}.0.0/16")
            t0 = time.monotonic()
            with tb.running(root / "fleet", shards=args.shards, wallets=args.wallets, net=args.net) as fleet:
                fleet_info = {"shards": args.shards, "wallets": args.wallets, "nodes": len(fleet.nodes),
                              "up_s": round(time.monotonic() - t0, 1)}
                folder = root / "service"
                keys = make_keys(folder)
                config, tokens, secret = write_config(folder, fleet=fleet, receiver=receiver, keys=keys,
                                                      driver={"cancel_grace": 300})
                group_vars = Path(fleet.inventory_dir) / "group_vars" / "all" / "chatops.yml"
                group_vars.write_text("---\n" + yaml.safe_dump({"exchange_allowed_signers": str(keys.allowed_signers),
                                                                "rolling_canary_bake": args.bake}))
                releases = Path(fleet.root)
                for version in (ROLLOUT, HELD):
                    build_release(releases / "releases", releases / "keys", releases / "catalog", COMPONENT, version)
                with Service(config, secret=secret, tokens=tokens, receiver=receiver, folder=folder) as service:
                    warm_up(service, receiver, f"deploy {COMPONENT}-9.9.9")
                    if not args.no_idle:
                        rounds.append(measure("idle", service, receiver, args.requests,
                                              f"deploy {COMPONENT}-9.9.9"))
                    body = {"patch_id": f"{COMPONENT}-{ROLLOUT}"}
                    response = service.api("POST", "/v1/deployments", "alice", json=body)
                    if response.status_code != 202:
                        raise BenchError(f"POST /v1/deployments answered {response.status_code}: {response.text}")
                    run_id = response.json()["id"]
                    say(f"rollout {run_id} started (canary bake {args.bake} s); waiting for its lease")
                    try:
                        wait_for_lease(fleet, service, run_id)
                        rounds.append(measure("rollout", service, receiver, args.requests,
                                              f"deploy {COMPONENT}-{HELD}", lambda: run_live(service, run_id)))
                    finally:
                        if run_live(service, run_id):
                            say(f"canceling the rollout {run_id} and waiting for it to stop")
                            service.api("POST", f"/v1/runs/{run_id}/cancel", "alice")
                            service.wait_run(run_id, timeout=600)
                say("stopping the fleet and removing its folder")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"machine": machine(), "fleet": fleet_info, "target_p99_ms": TARGET_P99_MS, "rounds": rounds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50, help="signed /patch commands sent at once; default 50")
    ap.add_argument("--net", type=int, default=64, help="second octet of the fleet's loopback /16; default 64")
    ap.add_argument("--shards", type=int, default=2, help="matching shards (2 nodes each); default 2")
    ap.add_argument("--wallets", type=int, default=1, help="wallet-signer nodes; default 1")
    ap.add_argument("--bake", type=int, default=30,
                    help="the rollout's canary bake (rolling_canary_bake) in seconds; default 30")
    ap.add_argument("--no-idle", action="store_true", help="skip the reference round without a rollout")
    ap.add_argument("--json", action="store_true", help="print one JSON document, nothing else")
    args = ap.parse_args()
    if not 5 <= args.requests <= 500:
        ap.error(f"--requests must be 5 to 500 (one of each command at least), got {args.requests}")
    if not 2 <= args.net <= 254 or not 1 <= args.shards <= 100 or not 1 <= args.wallets <= 50 or args.bake < 1:
        ap.error("--net must be 2 to 254, --shards 1 to 100, --wallets 1 to 50, --bake at least 1")

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    try:
        doc = bench(args)
    except KeyboardInterrupt:
        say("interrupted; the fleet was stopped and its folder removed")
        return 130
    except BenchError as e:
        say(f"bench failed: {e}; the fleet was stopped and its folder removed")
        return 1
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0 if all(r["ack_ms"]["all"]["errors"] == 0 for r in doc["rounds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
