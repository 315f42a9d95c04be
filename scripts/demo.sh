#!/usr/bin/env bash
# The whole story on the local testbed, driven by exchpatch as an operator would:
# bring the exchange up and put client load on it; rank the sample advisories against the
# live fleet; deploy the top patch (canary, switchovers, health gates, convergence); deploy
# a release that crashes and watch the canary catch it and the fleet roll back; then the
# load report (nothing lost), the audit trail, the metrics and the HTML reports.
set -euo pipefail
cd "$(dirname "$0")/.."
X=.venv/bin/exchpatch
PY=.venv/bin/python
work=$(mktemp -d)
load_pid=""
cleanup() {
  if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export EXCHPATCH_OPERATOR=${EXCHPATCH_OPERATOR:-demo-operator}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Start the local testbed (2 shards x primary/standby, 2 wallet signers, HAProxy)"
# The demo must run at any hour: its fleet gets an empty market calendar instead of
# testbed/freeze-windows.yml, whose funding windows (00:00, 08:00, 16:00 UTC) would refuse
# the rollouts for twenty minutes three times a day (docs/rollout.md, preflight).
tbdir="${EXCHPATCH_TESTBED_DIR:-.testbed}"
mkdir -p "$tbdir"
printf -- '---\nwindows: []\n' > "$tbdir/no-freeze-windows.yml"
$X testbed up --freeze-windows "$tbdir/no-freeze-windows.yml"

step "2. Build the signed releases of the sample catalog (and one that crashes on start)"
$X testbed release --component matching-engine --version 1.4.3 --fixes CVE-2026-31337 | head -1
$X testbed release --component matching-engine --version 1.5.0 --fixes CVE-2026-28814 \
  --migration forward_compatible | head -1
$X testbed release --component wallet-signer --version 2.3.1 --fixes CVE-2026-40211 | head -1
$X testbed release --component matching-engine --version 1.4.4 --fault crash | head -1
catalog="$tbdir/catalog"

step "3. Client load for the rest of the story: orders with client IDs (retried with the same ID) and withdrawals"
$X testbed load --rate 100 --duration 600 --json > "$work/load.json" &
load_pid=$!
sleep 2

step "4. What to patch first: the sample advisory feeds against the live fleet"
$X plan --feed feeds/nvd.json --feed feeds/kev.json --feed feeds/epss.csv --feed feeds/vulnrichment.json \
        --feed feeds/osv.json --catalog "$catalog" --output "$work/plan.json" | sed -n '1,8p'
top=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["patches"][0]["id"])' "$work/plan.json")
echo "top of the plan: $top"

step "5. exchpatch deploy $top: canary standby, canary shard switched over, then batches"
$X deploy "$top" --canary-bake 5

step "6. A release that crashes on start: caught at the canary, rolled back automatically"
rc=0
$X deploy matching-engine-1.4.4 --canary-bake 5 || rc=$?
[ "$rc" = 1 ] || { echo "expected the faulty release to fail (exit 1), got $rc"; exit 1; }

step "7. The fleet: every node answers, no drift, no lock held"
$X status

step "8. Load report: stop the load and prove nothing was lost"
kill -TERM "$load_pid"
wait "$load_pid" || true
load_pid=""
$PY - "$work/load.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"sent {r['sent']}  acked {r['acked']}  lost {r['lost']}  duplicated {r['duplicated']}  "
      f"double withdrawals {r['double_withdrawals']}  ledger balanced {r['ledger_balanced']}")
for market, ms in r["max_unavailable_ms"].items():
    print(f"  {market:10s} longest unavailability {ms} ms")
ok = r["lost"] == 0 and r["duplicated"] == 0 and r["double_withdrawals"] == 0 and r["ledger_balanced"]
sys.exit(0 if ok else 1)
PYEOF

step "9. Audit trail, history and metrics"
$X audit verify
$X history | tail -n 6
$X metrics

step "10. Reports"
faulty=$($X history --json | $PY -c '
import json, sys
runs = [r for r in json.load(sys.stdin)["data"]["runs"] if r.get("patch_id") == "matching-engine-1.4.4"]
print(runs[-1]["run"])')
$X report "$faulty" --load "$work/load.json"
echo
echo "The testbed keeps running for you to explore; stop it with: make testbed-down"
