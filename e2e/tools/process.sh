# Process helpers shared by e2e/cluster and e2e/node/node: components run in the background with a
# pid file in "$run" and a log in "$logs" (both set by the sourcing script, with LOG_PREFIX).

log() { printf '[%s] %s\n' "$LOG_PREFIX" "$*" >&2; }
die() { log "$*"; exit 1; }

is_running() { [[ -f "$run/$1.pid" ]] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

# The components started by this invocation, in order.
STARTED=()

# start NAME CMD...: starts a component in the background unless it already runs.
start() {
  local name="$1"; shift
  STARTED+=("$name")
  is_running "$name" && return 0
  "$@" >"$logs/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
}

# Fails naming the first started component that is no longer running, with its last words (a
# component that cannot bind its port exits at once; start-up must not report ready over it).
all_alive() {
  local name
  for name in "${STARTED[@]}"; do
    is_running "$name" ||
      die "$name exited during start-up; last lines of $logs/$name.log:"$'\n'"$(tail -n 5 "$logs/$name.log" 2>/dev/null)"
  done
}

# wait_for WHAT SECONDS CMD...: retries CMD until it succeeds, failing fast when a component dies.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    all_alive
    ((SECONDS < deadline)) || die "$what not ready after ${secs}s; see $logs/"
    sleep 0.5
  done
}
