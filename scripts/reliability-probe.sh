#!/usr/bin/env bash
# Re-measures the reliability figures of issue 13 with the release binary,
# the emulator (`godata-bridge sim`) and a throwaway PostgreSQL 15 cluster:
#   A. PostgreSQL restarted mid-burst: 3,000 cases, both capture modes;
#   B. Go.Data faults (50% 503, 10% dropped connections, 10% 429, 5 ms
#      latency): 1,000 cases, both modes;
#   C. token expiry (2 s idle lifetime): logins per expiry;
#   D. Go.Data unreachable for 20 s with 1,700 changes pending: WARN lines.
# Counts what arrived (distinct HMIS keys) and duplicates (records sharing
# an HMIS key). Run as root (PostgreSQL runs as the postgres user) or as a
# user that can run initdb. Not part of CI: it takes a few minutes.
#
#   cargo build --release && scripts/reliability-probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/godata-bridge}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
WORK=$(mktemp -d /tmp/gb-probe.XXXXXX)
chmod 755 "$WORK"
PGPORT=${PGPORT:-55439}
SIMPORT=${SIMPORT:-18439}
OUTBREAK=b6b9a9c4-2f4e-4c43-9f53-7b1b0f1f0a01
AS_PG=()
if [ "$(id -u)" = 0 ]; then AS_PG=(su postgres -s /bin/sh -c); fi
pg() { if [ ${#AS_PG[@]} -gt 0 ]; then "${AS_PG[@]}" "$*"; else sh -c "$*"; fi; }
SIM_PID= BRIDGE_PID=
cleanup() {
  [ -n "$BRIDGE_PID" ] && kill "$BRIDGE_PID" 2>/dev/null || true
  [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null || true
  pg "$PGBIN/pg_ctl -D $WORK/pg -m immediate stop" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/pg" && [ ${#AS_PG[@]} -eq 0 ] || chown postgres "$WORK/pg"
pg "$PGBIN/initdb -D $WORK/pg -U postgres -A trust" >/dev/null
cat >>"$WORK/pg/postgresql.conf" <<EOF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK/pg'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
EOF
pg "$PGBIN/pg_ctl -D $WORK/pg -l $WORK/pg/log -w start" >/dev/null
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres)

start_sim() { # extra sim flags…
  # A second user counts, so the bridge's token is never revoked by it.
  "$BIN" sim --listen "127.0.0.1:$SIMPORT" --user bridge@godata.example:bridge-demo-password \
    --user probe@godata.example:probe-password "$@" >"$WORK/sim.log" 2>&1 &
  SIM_PID=$!
  for _ in $(seq 100); do curl -s "http://127.0.0.1:$SIMPORT/api/system-settings/version" >/dev/null && return; sleep 0.1; done
  echo "sim did not start" >&2; exit 1
}
stop_sim() { kill -9 "$SIM_PID" 2>/dev/null || true; wait "$SIM_PID" 2>/dev/null || true; SIM_PID=; }

# HMIS keys of the live cases in Go.Data: "<distinct> <total>". The probe's
# own requests meet the injected faults too: it tries until one answers.
godata_counts() {
  local token out
  for _ in $(seq 50); do
    token=$(curl -sf -X POST "http://127.0.0.1:$SIMPORT/api/users/login" -H 'content-type: application/json' \
      -d '{"email":"probe@godata.example","password":"probe-password"}' | jq -r .id) || continue
    out=$(curl -sf -G "http://127.0.0.1:$SIMPORT/api/outbreaks/$OUTBREAK/cases" \
      --data-urlencode 'filter={"fields":["id","documents"]}' -H "Authorization: $token" |
      jq -r '[.[] | (.documents // [] | map(select(.type == "LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID") | .number) | first)] | "\(unique | length) \(length)"') || continue
    echo "$out"
    return
  done
  echo "0 0"
}

fresh_db() { # name mode
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" 2>/dev/null
  "${PSQL[@]}" -d "$1" -f examples/hmis.sql >/dev/null 2>&1
  export GODATA_BRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/$1"
  export GODATA_BRIDGE_GODATA_URL="http://127.0.0.1:$SIMPORT"
  export GODATA_BRIDGE_GODATA_PASSWORD=bridge-demo-password
  export GODATA_BRIDGE_CAPTURE=$2 GODATA_BRIDGE_SLOT="probe_$1"
  export GODATA_BRIDGE_KEEP_RUNNING_ON_REFUSED_LOGIN=true
  "$BIN" install --config examples/bridge.toml >/dev/null 2>&1
  # Only the push is probed here.
  "${PSQL[@]}" -d "$1" -c "DELETE FROM hmis.contacts; DELETE FROM hmis.cases; DELETE FROM godata_bridge.outbox" >/dev/null
}

start_bridge() {
  "$BIN" run --config examples/bridge.toml --log-format json --http-listen 127.0.0.1:0 >"$WORK/bridge.log" 2>&1 &
  BRIDGE_PID=$!
}
stop_bridge() { kill "$BRIDGE_PID" 2>/dev/null || true; wait "$BRIDGE_PID" 2>/dev/null || true; BRIDGE_PID=; }

insert_batch() { # db prefix from to
  "${PSQL[@]}" -d "$1" -c "INSERT INTO hmis.cases (case_id, first_name, reported_at, classification)
    SELECT '$2-' || g, 'P' || g, now(), 'suspected' FROM generate_series($3, $4) g" >/dev/null
}

wait_count() { # want timeout_s → prints "distinct total seconds"
  local start=$SECONDS c=(0 0)
  while [ $((SECONDS - start)) -lt "$2" ]; do
    read -r -a c <<<"$(godata_counts)"
    [ "${c[0]}" -ge "$1" ] && break
    sleep 1
  done
  echo "${c[0]} ${c[1]} $((SECONDS - start))"
}

# PROBES (default "A B C D") and MODES (default "trigger logical") pick a subset.
PROBES=${PROBES:-A B C D}
MODES=${MODES:-trigger logical}
want() { [[ " $PROBES " == *" $1 "* ]]; }
for mode in $MODES; do
  # A. PostgreSQL restart mid-burst.
  if want A; then
  start_sim
  fresh_db "a_$mode" "$mode"
  start_bridge
  for b in $(seq 0 29); do
    if [ "$b" = 15 ]; then pg "$PGBIN/pg_ctl -D $WORK/pg -m fast -w restart -l $WORK/pg/log" >/dev/null; fi
    until insert_batch "a_$mode" A $((b * 100 + 1)) $((b * 100 + 100)) 2>/dev/null; do sleep 0.2; done
  done
  read -r got total secs <<<"$(wait_count 3000 120)"
  echo "A $mode: PostgreSQL restarted mid-burst: $got/3000 delivered, $((total - got)) duplicated (${secs} s after the last insert)"
  stop_bridge; stop_sim
  fi

  # B. Go.Data faults.
  if want B; then
  start_sim --error-rate 0.5 --drop-rate 0.1 --rate-limit-rate 0.1 --latency-ms 5
  fresh_db "b_$mode" "$mode"
  start_bridge
  for b in $(seq 0 9); do insert_batch "b_$mode" B $((b * 100 + 1)) $((b * 100 + 100)); done
  read -r got total secs <<<"$(wait_count 1000 ${B_WAIT:-900})"
  echo "B $mode: 50% 503, 10% dropped, 10% 429: $got/1000 delivered, $((total - got)) duplicated (${secs} s)"
  stop_bridge; stop_sim
  fi
done

# C. Token expiry (trigger mode).
if want C; then
start_sim --token-ttl 2
fresh_db c_trigger trigger
start_bridge
insert_batch c_trigger C 1 10
wait_count 10 30 >/dev/null
sleep 4 # the token's idle lifetime passes (the point of the probe)
insert_batch c_trigger C 11 20
read -r got total _ <<<"$(wait_count 20 30)"
relogins=$(grep -c "logged in to go.data again" "$WORK/bridge.log" || true)
logins=$(grep -c '"logged in to go.data"' "$WORK/bridge.log" || true)
echo "C: token expired while idle: $got/20 delivered, $((total - got)) duplicated; $logins login(s) at start, $relogins re-login(s) after the expiry"
stop_bridge; stop_sim
fi

# D. Go.Data unreachable for 20 s with 1,700 changes pending (trigger mode).
if want D; then
fresh_db d_trigger trigger
start_bridge
for b in $(seq 0 16); do insert_batch d_trigger D $((b * 100 + 1)) $((b * 100 + 100)); done
sleep 20 # the outage (the point of the probe)
start_sim
read -r got total _ <<<"$(wait_count 1700 120)"
warns=$(grep -c '"level":"WARN"' "$WORK/bridge.log" || true)
bytes=$(wc -c <"$WORK/bridge.log")
echo "D: Go.Data unreachable 20 s with 1,700 pending: $got/1700 delivered, $((total - got)) duplicated; $warns WARN lines, $bytes bytes of log"
stop_bridge; stop_sim
fi
