#!/usr/bin/env bash
# The servers of the deployed pipeline, on 127.0.0.1, for tests and local trials:
# PostgreSQL (MLflow's and Dagster's databases), an S3 endpoint (moto), an MLflow
# tracking server (runs in PostgreSQL, artifacts in S3) and a two-node Ray cluster (a head
# and a second node joining it, each with its own resources, as two machines would).
#
#   scripts/services.sh up               start what is not running, wait until each answers
#   scripts/services.sh down             stop everything (nothing running is fine)
#   scripts/services.sh status           print each and whether it answers; non-zero if one does not
#   scripts/services.sh env              print services.env (the URLs, credentials, pid files)
#   scripts/services.sh restart NAME     NAME: postgres, s3, mlflow or ray
#   scripts/services.sh stop|start NAME  one service down / up again (outage tests)
#
# State (data, logs, pid files, services.env, services.json): $FLAME_SERVICES_DIR
# (default /tmp/flame-services). Ports: $FLAME_PG_PORT (55432), $FLAME_S3_PORT (59000),
# $FLAME_MLFLOW_PORT (55000), $FLAME_RAY_PORT (56379, the dashboard and job server on
# $FLAME_RAY_DASHBOARD_PORT, 58265); logical CPUs per Ray node: $FLAME_RAY_NODE_CPUS (2);
# bucket: $FLAME_BUCKET (flame-test). After `up`, later
# commands reuse the values services.env recorded unless the variables are set.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_BIN=${FLAME_VENV_BIN:-$REPO/.venv/bin}
PY=$VENV_BIN/python
DIR=${FLAME_SERVICES_DIR:-/tmp/flame-services}
ENV_FILE=$DIR/services.env
HOST=127.0.0.1

saved() {  # the value services.env recorded for $1, if any
    [[ -f $ENV_FILE ]] && sed -n "s/^export $1='\(.*\)'\$/\1/p" "$ENV_FILE" || true
}
PG_PORT=${FLAME_PG_PORT:-$(saved FLAME_PG_PORT)}; PG_PORT=${PG_PORT:-55432}
S3_PORT=${FLAME_S3_PORT:-$(saved FLAME_S3_PORT)}; S3_PORT=${S3_PORT:-59000}
MLFLOW_PORT=${FLAME_MLFLOW_PORT:-$(saved FLAME_MLFLOW_PORT)}; MLFLOW_PORT=${MLFLOW_PORT:-55000}
BUCKET=${FLAME_BUCKET:-$(saved FLAME_BUCKET)}; BUCKET=${BUCKET:-flame-test}
RAY_PORT=${FLAME_RAY_PORT:-$(saved FLAME_RAY_PORT)}; RAY_PORT=${RAY_PORT:-56379}
RAY_DASHBOARD_PORT=${FLAME_RAY_DASHBOARD_PORT:-$(saved FLAME_RAY_DASHBOARD_PORT)}; RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-58265}
RAY_NODE_CPUS=${FLAME_RAY_NODE_CPUS:-2}
MLFLOW_TIMEOUT=${FLAME_MLFLOW_TIMEOUT:-180}

PG_USER=flame
PG_PASSWORD=flame
PG_DIR=$DIR/pg
PG_DATA=$PG_DIR/data
PG_SOCKET=$PG_DIR/run
PG_LOG=$DIR/postgres.log
PG_PIDFILE=$PG_DATA/postmaster.pid
S3_PIDFILE=$DIR/s3.pid
S3_LOG=$DIR/s3.log
MLFLOW_PIDFILE=$DIR/mlflow.pid
MLFLOW_LOG=$DIR/mlflow.log
RAY_TEMP=$DIR/ray
RAY_HEAD_PIDFILE=$DIR/ray-head.pid
RAY_HEAD_LOG=$DIR/ray-head.log
RAY_NODE_PIDFILE=$DIR/ray-node.pid
RAY_NODE_LOG=$DIR/ray-node.log

PG_URL="postgresql+psycopg2://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT"
S3_URL="http://$HOST:$S3_PORT"
MLFLOW_URL="http://$HOST:$MLFLOW_PORT"
RAY_ADDRESS_VALUE="$HOST:$RAY_PORT"
RAY_JOBS_URL="http://$HOST:$RAY_DASHBOARD_PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=$S3_URL MLFLOW_S3_ENDPOINT_URL=$S3_URL
export MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0

die() { echo "services.sh: $*" >&2; exit 1; }

pg_bin() {
    local bin=${FLAME_PG_BIN:-}
    if [[ -z $bin ]]; then
        bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    fi
    [[ -n $bin && -x $bin/pg_ctl ]] || die "no PostgreSQL server found (apt-get install postgresql, or set FLAME_PG_BIN)"
    echo "$bin"
}

as_pg() {  # PostgreSQL refuses to run as root: root runs it as the postgres user
    if [[ $EUID -eq 0 ]]; then
        (cd "$PG_DIR" && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

elapsed() { echo "$(( $(date +%s%N) / 1000000 - $1 ))" | awk '{printf "%.1f", $1 / 1000}'; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

http_ok() {  # $1 answers 200
    "$PY" -c 'import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)' "$1" >/dev/null 2>&1
}

pid_alive() {  # pid file $1 names a live process whose command line contains $2
    local pid
    [[ -f $1 ]] || return 1
    pid=$(head -n 1 "$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

close_fds() {
    # A server must not inherit the caller's other descriptors: a lock that `flock FILE cmd`
    # holds would stay held as long as the server runs, and a pipe a caller reads would never end.
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if (( fd > 2 )); then eval "exec $fd>&-"; fi
    done
}

spawn() {  # spawn PIDFILE LOG CMD...: in a session of its own, its output in LOG
    local pidfile=$1 log=$2
    shift 2
    # setsid makes the server a process-group leader, so stopping it reaches its workers too.
    ( close_fds; exec setsid "$@" </dev/null >>"$log" 2>&1 ) &
    echo $! >"$pidfile"
}

stop_pid() {  # stop_pid PIDFILE PATTERN NAME: TERM the process group, wait, then KILL
    local pidfile=$1 pattern=$2 name=$3 pid i
    if ! pid_alive "$pidfile" "$pattern"; then
        rm -f "$pidfile"
        echo "$name: not running"
        return 0
    fi
    pid=$(head -n 1 "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    # Until the whole group is gone: a worker still holding the port would fail a restart.
    for i in $(seq 1 100); do
        kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        echo "$name: killed (did not stop on TERM within 10 s)"
    else
        echo "$name: stopped"
    fi
    rm -f "$pidfile"
}

run_service() {  # run_service NAME PIDFILE PATTERN LOG TIMEOUT CHECK CMD...: CMD spawned unless running, then waited for
    local name=$1 pidfile=$2 pattern=$3 log=$4 timeout=$5 check=$6
    shift 6
    if pid_alive "$pidfile" "$pattern"; then
        echo "$name: already running"
    else
        spawn "$pidfile" "$log" "$@"
    fi
    wait_for "$name" "$timeout" "$pidfile" "$pattern" "$log" "$check"
}

wait_for() {  # wait_for NAME TIMEOUT PIDFILE PATTERN LOG CHECK...: until CHECK succeeds
    local name=$1 timeout=$2 pidfile=$3 pattern=$4 log=$5 start
    shift 5
    start=$(now_ms)
    until "$@"; do
        if [[ -n $pidfile ]] && ! pid_alive "$pidfile" "$pattern"; then
            tail -n 40 "$log" >&2 || true
            die "$name exited while starting (log: $log)"
        fi
        if (( $(now_ms) - start > timeout * 1000 )); then
            tail -n 40 "$log" >&2 || true
            die "$name did not answer within $timeout s (log: $log)"
        fi
        sleep 0.3
    done
}

# --- PostgreSQL ---------------------------------------------------------------------------

pg_ready() { "$(pg_bin)/pg_isready" -q -h "$HOST" -p "$PG_PORT"; }

pg_running() { [[ -f $PG_DATA/PG_VERSION ]] && as_pg "$(pg_bin)/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }

psql_admin() {  # as the superuser, over the socket in the state dir
    as_pg "$(pg_bin)/psql" -X -q -t -A -v ON_ERROR_STOP=1 -h "$PG_SOCKET" -p "$PG_PORT" -U postgres -d postgres "$@"
}

pg_init() {
    local bin
    bin=$(pg_bin)
    mkdir -p "$PG_DIR" "$PG_SOCKET"
    touch "$PG_LOG"
    if [[ $EUID -eq 0 ]]; then chown postgres: "$PG_DIR" "$PG_SOCKET" "$PG_LOG"; fi
    [[ -f $PG_DATA/PG_VERSION ]] && return 0
    as_pg "$bin/initdb" -D "$PG_DATA" -U postgres -E UTF8 --no-locale --auth-local=trust --auth-host=scram-sha-256 >>"$PG_LOG"
    cat >>"$PG_DATA/postgresql.conf" <<EOF
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET'
EOF
    # The superuser only over the socket in the state dir; everyone else by password over TCP.
    cat >"$PG_DATA/pg_hba.conf" <<EOF
local all all trust
host all all $HOST/32 scram-sha-256
EOF
}

pg_start() {
    local start
    start=$(now_ms)
    pg_init
    if pg_running; then
        echo "postgres: already running ($HOST:$PG_PORT)"
    else
        # -o: the port again, in case FLAME_PG_PORT changed since initdb wrote postgresql.conf
        (close_fds; as_pg "$(pg_bin)/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t 60 -o "-p $PG_PORT" </dev/null >/dev/null) ||
            { tail -n 40 "$PG_LOG" >&2; die "postgres did not start (log: $PG_LOG)"; }
    fi
    wait_for postgres 60 "" "" "$PG_LOG" pg_ready
    psql_admin -c "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
            CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
        END IF; END \$\$;"
    local db
    for db in mlflow dagster; do
        if [[ $(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$db'") != 1 ]]; then
            psql_admin -c "CREATE DATABASE $db OWNER $PG_USER"
        fi
    done
    echo "postgres: up in $(elapsed "$start") s ($HOST:$PG_PORT, databases mlflow and dagster)"
}

pg_stop() {
    if pg_running; then
        as_pg "$(pg_bin)/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null
        echo "postgres: stopped"
    else
        echo "postgres: not running"
    fi
}

# --- S3 (moto) ----------------------------------------------------------------------------

s3_ready() { http_ok "$S3_URL/"; }

s3_bucket() {
    "$PY" - "$BUCKET" <<'EOF'
import sys

import boto3

s3 = boto3.client("s3")
if sys.argv[1] not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
    s3.create_bucket(Bucket=sys.argv[1])
EOF
}

s3_start() {
    local start
    start=$(now_ms)
    mkdir -p "$DIR"
    run_service s3 "$S3_PIDFILE" moto_server "$S3_LOG" 60 s3_ready "$VENV_BIN/moto_server" -H "$HOST" -p "$S3_PORT"
    # moto keeps objects in memory: a restarted endpoint starts empty, so the bucket is made again.
    s3_bucket
    echo "s3: up in $(elapsed "$start") s ($S3_URL, bucket $BUCKET)"
}

s3_stop() { stop_pid "$S3_PIDFILE" moto_server s3; }

# --- MLflow tracking server ---------------------------------------------------------------

mlflow_ready() { http_ok "$MLFLOW_URL/health"; }

mlflow_start() {
    local start
    start=$(now_ms)
    mkdir -p "$DIR"
    # PATH: the server starts uvicorn by name. No job execution: it is for GenAI scorer jobs,
    # which the pipeline never submits, and it starts about ten more Python processes.
    PATH="$VENV_BIN:$PATH" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
        run_service mlflow "$MLFLOW_PIDFILE" mlflow "$MLFLOW_LOG" "$MLFLOW_TIMEOUT" mlflow_ready \
        "$VENV_BIN/mlflow" server --host "$HOST" --port "$MLFLOW_PORT" --workers 1 \
        --backend-store-uri "$PG_URL/mlflow" --artifacts-destination "s3://$BUCKET/mlflow"
    echo "mlflow: up in $(elapsed "$start") s ($MLFLOW_URL, runs in $PG_URL/mlflow, artifacts in s3://$BUCKET/mlflow)"
}

mlflow_stop() { stop_pid "$MLFLOW_PIDFILE" mlflow mlflow; }

# --- Ray: a head node and a second node --------------------------------------------------

ray_nodes() {  # how many nodes the head counts alive
    "$PY" - "$RAY_JOBS_URL" <<'EOF' 2>/dev/null
import json, sys, urllib.request
nodes = json.load(urllib.request.urlopen(sys.argv[1] + "/nodes?view=summary", timeout=2))["data"]["summary"]
print(sum(1 for n in nodes if n["raylet"]["state"] == "ALIVE"))
EOF
}

ray_head_ready() { http_ok "$RAY_JOBS_URL/api/version"; }
ray_both_ready() { [[ $(ray_nodes) == 2 ]]; }

ray_start() {
    local start
    start=$(now_ms)
    mkdir -p "$RAY_TEMP"
    # --block keeps each node's `ray start` in the foreground, the leader of its own process
    # group: stopping that group stops this node's raylet and workers and no other Ray on the machine.
    PATH="$VENV_BIN:$PATH" run_service ray-head "$RAY_HEAD_PIDFILE" "ray start" "$RAY_HEAD_LOG" 120 ray_head_ready \
        "$VENV_BIN/ray" start --head --block \
        --node-ip-address "$HOST" --port "$RAY_PORT" --num-cpus "$RAY_NODE_CPUS" --resources '{"head_node": 1}' \
        --include-dashboard true --dashboard-host "$HOST" --dashboard-port "$RAY_DASHBOARD_PORT" \
        --object-store-memory 400000000 --temp-dir "$RAY_TEMP" --disable-usage-stats
    PATH="$VENV_BIN:$PATH" run_service ray-node "$RAY_NODE_PIDFILE" "ray start" "$RAY_NODE_LOG" 120 ray_both_ready \
        "$VENV_BIN/ray" start --block \
        --address "$RAY_ADDRESS_VALUE" --node-ip-address "$HOST" --num-cpus "$RAY_NODE_CPUS" \
        --resources '{"second_node": 1}' --object-store-memory 400000000 --disable-usage-stats
    echo "ray: up in $(elapsed "$start") s (2 nodes, $RAY_NODE_CPUS CPUs each; RAY_ADDRESS=$RAY_ADDRESS_VALUE, jobs at $RAY_JOBS_URL)"
}

ray_stop() {
    stop_pid "$RAY_NODE_PIDFILE" "ray start" ray-node
    stop_pid "$RAY_HEAD_PIDFILE" "ray start" ray-head
}

# --- services.env / services.json ---------------------------------------------------------

write_env() {
    local vars=(
        FLAME_SERVICES_DIR="$DIR"
        FLAME_PG_HOST="$HOST"
        FLAME_PG_PORT="$PG_PORT"
        FLAME_PG_USER="$PG_USER"
        FLAME_PG_PASSWORD="$PG_PASSWORD"
        FLAME_PG_URL="$PG_URL"
        FLAME_MLFLOW_DB_URL="$PG_URL/mlflow"
        FLAME_DAGSTER_DB_URL="$PG_URL/dagster"
        FLAME_DAGSTER_PG_HOST="$HOST"
        FLAME_DAGSTER_PG_PORT="$PG_PORT"
        FLAME_DAGSTER_PG_USER="$PG_USER"
        FLAME_DAGSTER_PG_PASSWORD="$PG_PASSWORD"
        FLAME_DAGSTER_PG_DB=dagster
        FLAME_S3_PORT="$S3_PORT"
        FLAME_BUCKET="$BUCKET"
        AWS_ENDPOINT_URL="$S3_URL"
        MLFLOW_S3_ENDPOINT_URL="$S3_URL"
        AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID"
        AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"
        AWS_DEFAULT_REGION="$AWS_DEFAULT_REGION"
        FLAME_MLFLOW_PORT="$MLFLOW_PORT"
        FLAME_MLFLOW_URL="$MLFLOW_URL"
        FLAME_PG_PIDFILE="$PG_PIDFILE"
        FLAME_S3_PIDFILE="$S3_PIDFILE"
        FLAME_MLFLOW_PIDFILE="$MLFLOW_PIDFILE"
        FLAME_RAY_PORT="$RAY_PORT"
        FLAME_RAY_DASHBOARD_PORT="$RAY_DASHBOARD_PORT"
        FLAME_RAY_ADDRESS="$RAY_ADDRESS_VALUE"
        FLAME_RAY_JOBS_URL="$RAY_JOBS_URL"
        FLAME_RAY_HEAD_PIDFILE="$RAY_HEAD_PIDFILE"
        FLAME_RAY_NODE_PIDFILE="$RAY_NODE_PIDFILE"
    )
    local kv
    for kv in "${vars[@]}"; do
        printf "export %s='%s'\n" "${kv%%=*}" "${kv#*=}"
    done >"$ENV_FILE.tmp"
    "$PY" -c 'import json, sys
print(json.dumps(dict(kv.split("=", 1) for kv in sys.argv[1:]), indent=2))' "${vars[@]}" >"$DIR/services.json.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
    mv "$DIR/services.json.tmp" "$DIR/services.json"
}

# --- commands -----------------------------------------------------------------------------

start_one() {
    case $1 in
        postgres) pg_start ;;
        s3) s3_start ;;
        mlflow) mlflow_start ;;
        ray) ray_start ;;
        *) die "unknown service '$1' (postgres, s3, mlflow or ray)" ;;
    esac
}

stop_one() {
    case $1 in
        postgres) pg_stop ;;
        s3) s3_stop ;;
        mlflow) mlflow_stop ;;
        ray) ray_stop ;;
        *) die "unknown service '$1' (postgres, s3, mlflow or ray)" ;;
    esac
}

status() {
    local down=0
    if pg_ready 2>/dev/null; then echo "postgres  up    $HOST:$PG_PORT"; else echo "postgres  down  $HOST:$PG_PORT"; down=1; fi
    if s3_ready; then echo "s3        up    $S3_URL"; else echo "s3        down  $S3_URL"; down=1; fi
    if mlflow_ready; then echo "mlflow    up    $MLFLOW_URL"; else echo "mlflow    down  $MLFLOW_URL"; down=1; fi
    local nodes
    nodes=$(ray_nodes || true)
    if [[ $nodes == 2 ]]; then echo "ray       up    $RAY_ADDRESS_VALUE (2 nodes)"; else echo "ray       down  $RAY_ADDRESS_VALUE (${nodes:-0} nodes)"; down=1; fi
    return $down
}

lock() {  # one mutating command at a time
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    exec 9>"$DIR/.lock"
    flock 9
}

cmd=${1:-}
case $cmd in
    up)
        lock
        start=$(now_ms)
        write_env
        pg_start
        s3_start
        mlflow_start
        ray_start
        echo "all up in $(elapsed "$start") s; environment: $ENV_FILE (scripts/services.sh env)"
        ;;
    down)
        lock
        ray_stop
        mlflow_stop
        s3_stop
        pg_stop
        ;;
    restart)
        [[ $# -eq 2 ]] || die "usage: $0 restart postgres|s3|mlflow|ray"
        lock
        stop_one "$2"
        start_one "$2"
        ;;
    stop | start)
        [[ $# -eq 2 ]] || die "usage: $0 $cmd postgres|s3|mlflow|ray"
        lock
        "${cmd}_one" "$2"
        ;;
    status) status ;;
    env)
        [[ -f $ENV_FILE ]] || die "no $ENV_FILE: run scripts/services.sh up first"
        cat "$ENV_FILE"
        ;;
    *)
        sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"
        [[ $cmd == -h || $cmd == --help || $cmd == help ]] || exit 2
        ;;
esac
