#!/usr/bin/env bash
# The bridge itself against a real Go.Data (docs/conformance.md says which
# server it was run against and how that server was set up): a
# throwaway PostgreSQL with the reference HMIS, `godata-bridge run` (trigger
# mode, both flows), then
#   1. two HMIS cases pushed, merged in Go.Data by a person (the tracer);
#      the pull writes the survivor's classification to both HMIS rows, an
#      HMIS change of the second row reaches the survivor, nothing is
#      restored;
#   2. lab results (pushed before the merge, one per case): each arrives
#      once under its case with the marker; after the merge an update of
#      the second case's lab row goes to Go.Data's copy under the survivor
#      and a new lab row of a merged-away case goes under the survivor; a
#      lab row moved to a third case moves there; one live record per row;
#   3. the same database pointed at a second outbreak: its keys become new
#      records there, with no dead letter.
# Needs, in the environment: GODATA_REAL_URL (…/api), GODATA_REAL_OUTBREAK,
# GODATA_REAL_USERS (comma-separated logins, each active in that outbreak),
# GODATA_REAL_PASSWORD (theirs) and, for step 3, GODATA_REAL_OUTBREAK_2
# active for a fourth user GODATA_REAL_USER_2. The team's server setup
# prints these exports (its prepare.py).
#
#   cargo build --release && scripts/real-godata-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/godata-bridge}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
WORK=$(mktemp -d /tmp/gb-real.XXXXXX)
chmod 755 "$WORK"
PGPORT=${PGPORT:-55441}
API=${GODATA_REAL_URL:?}
OB=${GODATA_REAL_OUTBREAK:?}
BRIDGE_USER=$(cut -d, -f1 <<<"${GODATA_REAL_USERS:?}")
TRACER=$(cut -d, -f2 <<<"$GODATA_REAL_USERS")
PW=${GODATA_REAL_PASSWORD:?}
AS_PG=()
if [ "$(id -u)" = 0 ]; then AS_PG=(su postgres -s /bin/sh -c); fi
pg() { if [ ${#AS_PG[@]} -gt 0 ]; then "${AS_PG[@]}" "$*"; else sh -c "$*"; fi; }
BRIDGE_PID=
cleanup() {
  [ -n "$BRIDGE_PID" ] && kill "$BRIDGE_PID" 2>/dev/null || true
  pg "$PGBIN/pg_ctl -D $WORK/pg -m immediate stop" >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] && cp "$WORK/bridge.log" /tmp/real-bridge.log; rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/pg" && { [ ${#AS_PG[@]} -eq 0 ] || chown postgres "$WORK/pg"; }
pg "$PGBIN/initdb -D $WORK/pg -U postgres -A trust" >/dev/null
printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" "$PGPORT" "$WORK/pg" >>"$WORK/pg/postgresql.conf"
pg "$PGBIN/pg_ctl -D $WORK/pg -l $WORK/pg/log -w start" >/dev/null
PSQL=(psql -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres)
"${PSQL[@]}" -f examples/hmis.sql >/dev/null 2>&1
"${PSQL[@]}" -c "DELETE FROM hmis.lab_results; DELETE FROM hmis.contacts; DELETE FROM hmis.cases" >/dev/null
export GODATA_BRIDGE_DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
export GODATA_BRIDGE_GODATA_URL=${API%/api} GODATA_BRIDGE_GODATA_USER=$BRIDGE_USER
export GODATA_BRIDGE_GODATA_PASSWORD=$PW GODATA_BRIDGE_OUTBREAK_ID=$OB
"$BIN" install --config examples/bridge.toml >/dev/null 2>&1
run() { "$BIN" run --config examples/bridge.toml --log-format json --http-listen 127.0.0.1:0 >>"$WORK/bridge.log" 2>&1 & BRIDGE_PID=$!; }
run

token() { curl -sf -X POST "$API/oauth/token" -H 'content-type: application/json' -d "{\"username\":\"$1\",\"password\":\"$PW\"}" | jq -r .access_token; }
T=$(token "$TRACER")
gd() { curl -s -H "Authorization: $T" -H 'content-type: application/json' "$@"; }
wait_for() { # description seconds command…
  local what=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do if "$@"; then return 0; fi; sleep 1; done
  echo "FAIL: $what"; tail -5 "$WORK/bridge.log"; exit 1
}
# Keys of this run only: earlier runs' records stay in the outbreak.
R="RG$(date +%s)"
gid() { "${PSQL[@]}" -c "SELECT godata_id FROM godata_bridge.link WHERE row_key = '{\"case_id\": \"$1\"}'"; }
linked() { [ -n "$(gid "$1")" ]; }

"${PSQL[@]}" -c "INSERT INTO hmis.cases (case_id, first_name, last_name, reported_at, classification)
  VALUES ('$R-1', 'Fatu', 'Kamara', now(), 'suspected'), ('$R-2', 'Fatou', 'Kamara', now(), 'suspected'),
         ('$R-3', 'Sahr', 'Conteh', now(), 'suspected');
  INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, result)
  VALUES ('$R-L1', '$R-1', '$R-S1', 'negative'), ('$R-L2', '$R-2', '$R-S2', 'negative')" >/dev/null
wait_for "both cases pushed" 60 linked "$R-2"
wait_for "both cases pushed" 30 linked "$R-1"
G1=$(gid "$R-1"); G2=$(gid "$R-2")
echo "pushed: $R-1 → $G1, $R-2 → $G2"
# Live lab results of a sample: "personId result" per line.
labs() { gd -G "$API/outbreaks/$OB/lab-results/aggregate" --data-urlencode "filter={\"where\":{\"sampleIdentifier\":\"$1\"}}" | jq -r '.[] | .personId + " " + (.result // "-") + " " + (.godataBridgeRef // "no-marker")'; }
one_under() { local l; l=$(labs "$1"); [ "$(wc -l <<<"$l")" = 1 ] && [ "$(cut -d' ' -f1 <<<"$l")" = "$2" ] && [ "$(cut -d' ' -f3 <<<"$l")" != no-marker ]; }
wait_for "lab result 1 under its case" 60 one_under "$R-S1" "$G1"
wait_for "lab result 2 under its case" 30 one_under "$R-S2" "$G2"
echo "ok: each lab row is one lab result under its case, with the marker"
S=$(gd -X POST "$API/outbreaks/$OB/merge" -d "{\"ids\":[\"$G1\",\"$G2\"],\"type\":\"LNG_REFERENCE_DATA_CATEGORY_PERSON_TYPE_CASE\",\"model\":{\"firstName\":\"Fatu\",\"lastName\":\"Kamara\",\"classification\":\"LNG_REFERENCE_DATA_CATEGORY_CASE_CLASSIFICATION_CONFIRMED\",\"documents\":[{\"type\":\"LNG_REFERENCE_DATA_CATEGORY_DOCUMENT_TYPE_EXTERNAL_ID\",\"number\":\"$R-1\"}]}}" | jq -r .id)
echo "merged by the tracer into $S"
both_confirmed() { [ "$("${PSQL[@]}" -c "SELECT count(*) FROM hmis.cases WHERE case_id IN ('$R-1','$R-2') AND classification = 'confirmed'")" = 2 ]; }
wait_for "the pull writes the survivor to both HMIS rows" 60 both_confirmed
echo "ok: both HMIS rows confirmed from the survivor"
"${PSQL[@]}" -c "UPDATE hmis.cases SET first_name = 'Fatou Mariama' WHERE case_id = '$R-2'" >/dev/null
survivor_updated() { [ "$(gd "$API/outbreaks/$OB/cases/$S" | jq -r .firstName)" = "Fatou Mariama" ]; }
wait_for "the HMIS change of the second row reaches the survivor" 60 survivor_updated
echo "ok: the HMIS change of $R-2 reached the survivor"
for g in "$G1" "$G2"; do
  st=$(gd -o /dev/null -w '%{http_code}' "$API/outbreaks/$OB/cases/$g")
  [ "$st" = 404 ] || { echo "FAIL: $g is back ($st)"; exit 1; }
done
echo "ok: neither merged-away record restored; links: $(gid "$R-1") $(gid "$R-2")"
wait_for "Go.Data's copy of lab result 2 under the survivor" 30 one_under "$R-S2" "$S"
"${PSQL[@]}" -c "UPDATE hmis.lab_results SET result = 'positive' WHERE lab_id = '$R-L2';
  INSERT INTO hmis.lab_results (lab_id, case_id, sample_id, result) VALUES ('$R-L4', '$R-1', '$R-S4', 'positive')" >/dev/null
positive_under() { one_under "$1" "$2" && [ "$(labs "$1" | cut -d' ' -f2)" = LNG_REFERENCE_DATA_CATEGORY_LAB_TEST_RESULT_POSITIVE ]; }
wait_for "the update on the survivor's copy" 60 positive_under "$R-S2" "$S"
wait_for "a new lab row of a merged-away case under the survivor" 60 one_under "$R-S4" "$S"
echo "ok: after the merge, lab results follow the survivor (one live record each)"
G3=$(gid "$R-3")
"${PSQL[@]}" -c "UPDATE hmis.lab_results SET case_id = '$R-3' WHERE lab_id = '$R-L1'" >/dev/null
wait_for "the moved lab row under its new case" 60 one_under "$R-S1" "$G3"
echo "ok: a lab row moved to $R-3 moved in Go.Data (one live record)"
dead=$("${PSQL[@]}" -c "SELECT count(*) FROM godata_bridge.dead_letter")
echo "push dead letters: $dead; write-back dead letters: $("${PSQL[@]}" -c "SELECT count(*) || ' ' || coalesce(string_agg(sqlstate || ' ' || coalesce(constraint_name, '-'), ', '), '') FROM godata_bridge.writeback_dead_letter")"

if [ -n "${GODATA_REAL_OUTBREAK_2:-}" ]; then
  kill "$BRIDGE_PID"; wait "$BRIDGE_PID" 2>/dev/null || true
  export GODATA_BRIDGE_OUTBREAK_ID=$GODATA_REAL_OUTBREAK_2 GODATA_BRIDGE_GODATA_USER=${GODATA_REAL_USER_2:?}
  "${PSQL[@]}" -c "UPDATE hmis.cases SET last_name = 'Kamara-$R' WHERE case_id IN ('$R-1','$R-2')" >/dev/null
  run
  # Read as the tracer: a login as the bridge's user would revoke its token.
  in_b() { [ "$(gd -G "$API/outbreaks/$GODATA_REAL_OUTBREAK_2/cases" --data-urlencode "filter={\"where\":{\"lastName\":\"Kamara-$R\"}}" | jq length)" = 2 ]; }
  wait_for "both keys as new records in the second outbreak" 60 in_b
  echo "ok: the second outbreak has both keys as new records; push dead letters: $("${PSQL[@]}" -c "SELECT count(*) FROM godata_bridge.dead_letter")"
fi
