#!/usr/bin/env bash
# Kamailio in front of ScriptForge: bash deploy/kamailio/run.sh start|stop|status
#
# Settings (environment):
#   SCRIPTFORGE_SIP_ADDRESS     listen address               127.0.0.1
#   SCRIPTFORGE_SIP_PORT        listen port (UDP)            5060
#   SCRIPTFORGE_SIP_NEXT_HOP    host:port calls are relayed to  127.0.0.1:5080
#   SCRIPTFORGE_SIP_WORKERS     Kamailio worker processes    4 (each blocks while ScriptForge answers)
#   SCRIPTFORGE_SIP_RUN_DIR     pid file, runtime dir, log   $SCRIPTFORGE_DATA_DIR/kamailio
#   SCRIPTFORGE_BROKER, SCRIPTFORGE_TOPIC_PREFIX, ...: as every scriptforge command (read by the KEMI
#   script's client); the mapping settings (SCRIPTFORGE_SIP_ROUTE, ...) are in docs/kamailio.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

address="${SCRIPTFORGE_SIP_ADDRESS:-127.0.0.1}"
port="${SCRIPTFORGE_SIP_PORT:-5060}"
workers="${SCRIPTFORGE_SIP_WORKERS:-4}"
data_dir="${SCRIPTFORGE_DATA_DIR:-.scriptforge}"
run_dir="${SCRIPTFORGE_SIP_RUN_DIR:-$data_dir/kamailio}"
mkdir -p "$run_dir"
run_dir="$(cd "$run_dir" && pwd)"
pid_file="$run_dir/kamailio.pid"
log_file="$run_dir/kamailio.log"
python="${SCRIPTFORGE_PYTHON:-$repo/.venv/bin/python}"

running() {
    [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

listening() {
    # a UDP socket bound to the address and port (ss prints it as address:port)
    ss -lun 2>/dev/null | awk '{print $4}' | grep -qx "$address:$port"
}

start() {
    if running; then
        echo "kamailio already runs (pid $(cat "$pid_file")) on udp:$address:$port"
        return 0
    fi
    command -v kamailio >/dev/null || { echo "kamailio is not installed (apt-get install kamailio kamailio-python3-modules)" >&2; return 1; }
    # Kamailio embeds the system's libpython3.11: it finds ScriptForge and its dependencies through
    # PYTHONPATH (the repo itself, the venv's packages, this folder for sf_client)
    local site
    site="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    export PYTHONPATH="$here:$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
    # -DD: stay in the foreground (so $! is Kamailio's main process), -E: log to stderr (the log file)
    kamailio -f "$here/kamailio.cfg" -A "SF_KEMI_SCRIPT=\"$here/scriptforge_routing.py\"" \
        -l "udp:$address:$port" -n "$workers" -Y "$run_dir" -m 64 -M 16 -DD -E \
        >"$log_file" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pid_file"
    # ready once it listens and each worker has said so (after connecting to ScriptForge: up to the
    # client's start timeout, 30 s, when the broker is slow)
    for _ in $(seq 1 400); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "kamailio exited at start; the end of $log_file:" >&2
            tail -n 20 "$log_file" >&2
            rm -f "$pid_file"
            return 1
        fi
        if listening && [ "$(grep -c 'scriptforge: worker [0-9]* ready' "$log_file")" -ge "$workers" ]; then
            echo "kamailio runs (pid $pid) on udp:$address:$port, next hop ${SCRIPTFORGE_SIP_NEXT_HOP:-127.0.0.1:5080}, log $log_file"
            return 0
        fi
        sleep 0.1
    done
    echo "kamailio was not ready on udp:$address:$port within 40 s; see $log_file" >&2
    kill "$pid" 2>/dev/null || true
    return 1
}

stop() {
    if ! running; then
        echo "kamailio is not running"
        rm -f "$pid_file"
        return 0
    fi
    local pid
    pid="$(cat "$pid_file")"
    kill "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; echo "kamailio stopped"; return 0; }
        sleep 0.1
    done
    echo "kamailio (pid $pid) did not stop within 10 s: killing it" >&2
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pid_file"
}

status() {
    if running; then
        echo "kamailio runs (pid $(cat "$pid_file")) on udp:$address:$port"
    else
        echo "kamailio is not running"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
