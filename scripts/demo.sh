#!/usr/bin/env bash
# The story so far, on the local testbed: bring the exchange up, build a signed release,
# run client load while a matching primary is SIGKILLed and its standby promoted, prove
# that nothing was lost; rank the sample advisories against the fleet; roll the release
# out under load; and watch a crashing release get caught at the canary and rolled back.
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
[ "$rc" = 0 ] || exit "$rc"

step "6. What to patch first: the sample advisory feeds against the live fleet"
$X plan --feed feeds/nvd.json --feed feeds/kev.json --feed feeds/epss.csv --feed feeds/vulnrichment.json \
        --feed feeds/osv.json --catalog "${EXCHPATCH_TESTBED_DIR:-.testbed}/catalog"

step "7. Roll matching-engine 1.4.3 out under load: canary, switchovers, health gates"
$X testbed load --rate 100 --duration 75 --json > "$work/load2.json" &
load_pid=$!
sleep 3
ANSIBLE_CONFIG=ansible.cfg .venv/bin/ansible-playbook playbooks/rolling_patch.yml \
  -e patch_id=matching-engine-1.4.3 -e rolling_canary_bake=5 | grep -E "^(PLAY|TASK|RUNNING HANDLER) \[|msg" || true

step "8. A faulty release (it crashes): caught at the canary, rolled back automatically"
$X testbed release --component matching-engine --version 1.4.4 --fault crash >/dev/null
if ANSIBLE_CONFIG=ansible.cfg .venv/bin/ansible-playbook playbooks/rolling_patch.yml \
     -e patch_id=matching-engine-1.4.4 -e rolling_canary_bake=5 > "$work/faulty.log" 2>&1; then
  echo "the faulty release was NOT caught"; exit 1
fi
grep -o "matching-engine-1.4.4 failed on.*" "$work/faulty.log" | head -1 | cut -c1-400
wait "$load_pid" || rc=$?

step "9. Load report across both rollouts"
$PY - "$work/load2.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"sent {r['sent']}  acked {r['acked']}  lost {r['lost']}  duplicated {r['duplicated']}  "
      f"double withdrawals {r['double_withdrawals']}  ledger balanced {r['ledger_balanced']}")
PYEOF
$X testbed status || true
echo
echo "The testbed keeps running for you to explore; stop it with: make testbed-down"
exit "$rc"
