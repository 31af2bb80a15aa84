#!/usr/bin/env bash
# make bench: install wrk if missing, recreate the bench database, migrate it,
# then run bench/bench.py, which serves the apps with gunicorn, loads data with
# COPY, drives load with wrk and prints one table (also bench/results/latest.md).
#
# Environment (all optional):
#   BENCH_PG            server URL without database   (postgresql://postgres@127.0.0.1:5432)
#   BENCH_DB            database to drop and recreate (tenant_analytics_bench)
#   BENCH_*             sizes and durations, see bench/settings.py
#   BENCH_PROFILE_SECONDS  sample target 1's workers with py-spy this long (installed then)
#   VENV                virtualenv with the app installed (.venv)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BENCH_PG=${BENCH_PG:-postgresql://postgres@127.0.0.1:5432}
BENCH_DB=${BENCH_DB:-tenant_analytics_bench}
RUN_DIR=bench/results/run
export VENV
export BENCH_DATABASE_URL="$BENCH_PG/$BENCH_DB"

# Stop any gunicorn master bench.py left behind (it stops them itself; this
# covers it being killed). Each master wrote its pid file under $RUN_DIR.
stop_servers() {
    local pidfile pid
    for pidfile in "$RUN_DIR"/*.pid; do
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        # Only a gunicorn: a stale file's pid may belong to someone else by now.
        if grep -qs gunicorn "/proc/$pid/cmdline"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_wrk() {
    command -v wrk >/dev/null && return
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "== installing wrk"
    $sudo apt-get install -y wrk || { $sudo apt-get update && $sudo apt-get install -y wrk; }
}

# py-spy reads the workers' memory: root, or a kernel letting a process trace its
# non-children (kernel.yama.ptrace_scope=0).
ensure_py_spy() {
    [ "${BENCH_PROFILE_SECONDS:-0}" -gt 0 ] || return 0
    [ -x "$VENV/bin/py-spy" ] && return
    echo "== installing py-spy (BENCH_PROFILE_SECONDS is set)"
    "$VENV/bin/pip" install --quiet -e '.[profile]'
}

recreate_database() {
    echo "== recreating database $BENCH_DB"
    psql "$BENCH_PG/postgres" -v ON_ERROR_STOP=1 -q \
        -c "DROP DATABASE IF EXISTS \"$BENCH_DB\" WITH (FORCE)" \
        -c "CREATE DATABASE \"$BENCH_DB\""
}

migrate() {
    echo "== flask db upgrade"
    DATABASE_URL="$BENCH_DATABASE_URL" "$VENV/bin/flask" --app tenant_analytics db upgrade
}

mkdir -p "$RUN_DIR"
stop_servers
ensure_wrk
ensure_py_spy
recreate_database
migrate
"$VENV/bin/python" bench/bench.py
