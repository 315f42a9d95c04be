#!/usr/bin/env bash
# The whole story on the local testbed, driven by exchpatch as an operator would:
# bring the exchange up and put client load on it; sync the feed cache from a mirror, find what each
# node is exposed to from its SBOM, and rank the sample advisories against the
# live fleet; deploy the top patch (canary, switchovers, health gates, convergence); deploy
# a release that crashes and watch the canary catch it and the fleet roll back; then the
# load report (nothing lost), the audit trail, the metrics and the HTML reports.
#
# The demo tells its story from a fleet it sets up itself, every time: whatever ran on the
# testbed before (other releases in its catalog, nodes on other versions, a demo that just
# finished) is stopped and moved aside to <testbed>.previous, and a fresh fleet, catalog and
# audit trail are made. EXCHPATCH_TESTBED_DIR / EXCHPATCH_TESTBED_NET choose where;
# EXCHPATCH_DEMO_SHARDS, EXCHPATCH_DEMO_WALLETS and EXCHPATCH_DEMO_BAKE size it (tests use a small one).
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
shards=${EXCHPATCH_DEMO_SHARDS:-2}
wallets=${EXCHPATCH_DEMO_WALLETS:-2}
bake=${EXCHPATCH_DEMO_BAKE:-5}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Start a fresh local testbed ($shards shards x primary/standby, $wallets wallet signers, HAProxy)"
tbdir=$(realpath -m "${EXCHPATCH_TESTBED_DIR:-.testbed}")
export EXCHPATCH_TESTBED_DIR="$tbdir"
if [ -e "$tbdir/testbed.json" ]; then
  $X testbed down >/dev/null || { echo "the testbed at $tbdir would not stop; see: $X testbed status"; exit 1; }
fi
if [ -e "$tbdir" ]; then
  rm -rf "$tbdir.previous"
  mv "$tbdir" "$tbdir.previous"
  echo "the previous testbed (its catalog, node data and audit trail) is kept at $tbdir.previous"
fi
mkdir -p "$tbdir"
# The demo's own audit trail, beside its fleet: the story is verified from its first record.
export EXCHPATCH_AUDIT_FILE="$tbdir/audit.jsonl"
# The demo must run at any hour: its fleet gets an empty market calendar instead of
# testbed/freeze-windows.yml, whose funding windows (00:00, 08:00, 16:00 UTC) would refuse
# the rollouts for twenty minutes three times a day (docs/rollout.md, preflight).
printf -- '---\nwindows: []\n' > "$tbdir/no-freeze-windows.yml"
$X testbed up --shards "$shards" --wallets "$wallets" --freeze-windows "$tbdir/no-freeze-windows.yml" \
  --json > "$work/up.json"
inv=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["inventory"])' "$work/up.json")
$X testbed status

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

step "4. Threat intelligence: sync the feed cache (from a mirror folder, as an air-gapped venue would), then which node is exposed to what now"
# The mirror holds the sample feeds and a real OSV record (Ubuntu's regreSSHion, CVE-2024-6387), laid out as
# docs/feeds.md says; online, the same command reads CISA, FIRST, NVD, OSV and CSAF providers.
mkdir -p "$work/mirror/osv"
cp feeds/kev.json feeds/epss.csv feeds/nvd.json "$work/mirror/"
cp feeds/osv.json tests/fixtures/osv-real/UBUNTU-CVE-2024-6387.json "$work/mirror/osv/"
$PY - "$work/mirror" <<'PYEOF'
import json, os, sys
for rec in json.load(open("feeds/vulnrichment.json")):  # the mirror keeps cisagov/vulnrichment's layout
    cve = rec["cveMetadata"]["cveId"]
    year, num = cve.split("-")[1], int(cve.split("-")[2])
    folder = os.path.join(sys.argv[1], "vulnrichment", year, f"{num // 1000}xxx")
    os.makedirs(folder, exist_ok=True)
    json.dump(rec, open(os.path.join(folder, f"{cve}.json"), "w"))
PYEOF
feeds="$work/feeds"
$X feeds sync --mirror "$work/mirror" --cache "$feeds" --inventory "$inv" --only kev epss nvd osv
$X exposure --inventory "$inv" --catalog "$catalog" --cache "$feeds"
$X feeds sync --mirror "$work/mirror" --cache "$feeds" --only vulnrichment | tail -n +2  # the exposed CVEs' SSVC too
$X feeds status --cache "$feeds"

step "5. What to patch first: the feed cache and the exposure against the live fleet"
$X plan --feed-cache "$feeds" --catalog "$catalog" --inventory "$inv" --output "$work/plan.json" | sed -n '1,12p'
top=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["patches"][0]["id"])' "$work/plan.json")
echo "top of the plan: $top"
[ "$top" != matching-engine-1.4.4 ] || { echo "the crashing release tops the plan: the catalog is not the demo's"; exit 1; }

step "6. exchpatch deploy $top: canary standby, canary shard switched over, then batches"
$X deploy "$top" --inventory "$inv" --catalog "$catalog" --canary-bake "$bake"

step "7. A release that crashes on start: caught at the canary, rolled back automatically"
rc=0
$X deploy matching-engine-1.4.4 --inventory "$inv" --catalog "$catalog" --canary-bake "$bake" || rc=$?
[ "$rc" = 1 ] || { echo "expected the faulty release to fail (exit 1), got $rc"; exit 1; }

step "8. The fleet: every node answers, no drift, no lock held"
$X status --inventory "$inv"

step "9. Load report: stop the load and prove nothing was lost"
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

step "10. Audit trail, history and metrics"
$X audit verify
$X history | tail -n 6
$X metrics

step "11. Reports"
faulty=$($X history --json | $PY -c '
import json, sys
runs = [r for r in json.load(sys.stdin)["data"]["runs"] if r.get("patch_id") == "matching-engine-1.4.4"]
print(runs[-1]["run"])')
$X report "$faulty" --load "$work/load.json"
echo
echo "The testbed keeps running for you to explore (its audit trail: export EXCHPATCH_AUDIT_FILE=$EXCHPATCH_AUDIT_FILE);"
echo "stop it with: EXCHPATCH_TESTBED_DIR=$tbdir $X testbed down   (make testbed-down for the default one)"
