#!/usr/bin/env bash
# The story so far, on the local testbed: bring the exchange up, build a signed release,
# run client load while a matching primary is SIGKILLed and its standby promoted, and
# prove that no acknowledged order was lost or duplicated and no withdrawal went out twice.
set -euo pipefail
cd "$(dirname "$0")/.."
X=.venv/bin/exchpatch
PY=.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Start the local testbed (2 shards x primary/standby, 2 wallet signers, HAProxy)"
$X testbed up

step "2. Build a signed release and its patch catalog entry"
$X testbed release --component matching-engine --version 1.4.3 --fixes CVE-2026-31337

step "3. 30 s of client load at 200 req/s; at 10 s shard 0's primary is SIGKILLed and its standby promoted"
$X testbed status --json > "$work/status.json"
read -r primary standby < <($PY - "$work/status.json" <<'PYEOF'
import json, sys
nodes = [n for n in json.load(open(sys.argv[1]))["nodes"] if n.get("shard") == 0]
p = next(n["name"] for n in nodes if n["role"] == "primary")
s = next(n["name"] for n in nodes if n["role"] == "standby")
print(p, s)
PYEOF
)
$X testbed load --rate 200 --duration 30 --json > "$work/load.json" &
load_pid=$!
sleep 10
$X testbed kill "$primary"
$X testbed promote "$standby"
rc=0
wait "$load_pid" || rc=$?

step "4. Load report"
$PY - "$work/load.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"sent {r['sent']}  acked {r['acked']}  lost {r['lost']}  duplicated {r['duplicated']}  "
      f"double withdrawals {r['double_withdrawals']}  ledger balanced {r['ledger_balanced']}")
print(f"latency p50 {r['latency_ms']['p50']} ms  p99 {r['latency_ms']['p99']} ms")
for market, ms in r["max_unavailable_ms"].items():
    print(f"  {market:10s} longest unavailability {ms} ms")
PYEOF

step "5. Fleet after the failover"
sleep 3
$X testbed status || true
echo
echo "The testbed keeps running for you to explore; stop it with: make testbed-down"
exit "$rc"
