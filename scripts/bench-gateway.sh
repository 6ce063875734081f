#!/usr/bin/env bash
# Benchmarks the poolgate gateway in one run, side by side with a direct call to the mock
# upstream and with nginx (proxy_pass with upstream keepalive) as the reference proxy hop, and
# prints one table with ratios and verdicts against the targets:
#   added p99 <= 0.5 ms at 1,000 req/s; throughput >= 80% of nginx; 1,000 concurrent streams
#   with zero lost frames; RSS <= 100 MB with 10,000 accounts / 100,000 keys; a one-account
#   delta <= 2 KB; no 40 ms Nagle stalls.
# Loopback only; every process it starts is stopped on exit. The load generator and the
# servers share the machine's cores (nothing is pinned): read ratios, not absolute figures.
#
# Usage: scripts/bench-gateway.sh     (4-5 minutes once the release build is cached; a cold
#        release build of the workspace adds several minutes, and poolgate's fat-LTO dist
#        build about five more)
# Knobs (environment): BENCH_RATE (1000), BENCH_LATENCY_SECS (15), BENCH_STREAMS (1000),
#   BENCH_ACCOUNTS (10000), BENCH_KEYS (100000), BENCH_CONNECTIONS (32),
#   BENCH_THROUGHPUT_ROUNDS (4 interleaved rounds of 4 s per target), BENCH_JSON (a path
#   for the figures as JSON), BENCH_KEEP=1 keeps the temp dir (logs, configs).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/poolgate-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
RATE="${BENCH_RATE:-1000}"
LATENCY_SECS="${BENCH_LATENCY_SECS:-15}"
STREAMS="${BENCH_STREAMS:-1000}"
ACCOUNTS="${BENCH_ACCOUNTS:-10000}"
KEYS="${BENCH_KEYS:-100000}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
THROUGHPUT_ROUNDS="${BENCH_THROUGHPUT_ROUNDS:-4}"

# --- nginx (Debian package) ------------------------------------------------------------------
NGINX="$(command -v nginx || true)"
[ -n "$NGINX" ] || [ ! -x /usr/sbin/nginx ] || NGINX=/usr/sbin/nginx
if [ -z "$NGINX" ]; then
  log "installing nginx (apt-get)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 \
    || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
fi
[ -x "$NGINX" ] || die "nginx is not installed"

# --- release binaries ------------------------------------------------------------------------
log "building release binaries (poolctl, poolgate-mock-upstream, poolgate-bench) and poolgate as shipped (dist profile)"
cargo build --release --quiet -p poolctl -p poolgate-testkit -p poolgate-bench --bins
cargo build --profile dist --quiet -p poolgate --bins
BIN="$CARGO_TARGET_DIR/release"
DIST="$CARGO_TARGET_DIR/dist"
for b in poolgate poolctl poolgate-mock-upstream poolgate-bench; do
  [ -x "$BIN/$b" ] || die "$BIN/$b was not built"
done

# --- temp dir, process bookkeeping, cleanup --------------------------------------------------
TMP="$(mktemp -d /tmp/poolgate-bench.XXXXXX)"
chmod 700 "$TMP"
PIDS=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ "${#PIDS[@]}" -gt 0 ]; then
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    # Whatever has not stopped 10 s after SIGTERM is killed; `wait` reaps the rest.
    (sleep 10; kill -KILL "${PIDS[@]}" 2>/dev/null || true) >/dev/null 2>&1 &
    local killer=$!
    wait "${PIDS[@]}" 2>/dev/null || true
    kill "$killer" 2>/dev/null || true
    wait "$killer" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ]; then
    for f in mock.err nginx/error.log poolgate.log gateway.log; do
      [ -s "$TMP/$f" ] && { log "last lines of $f:"; tail -n 20 "$TMP/$f" >&2; }
    done
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1,000 streams through two proxies need a few thousand descriptors per process.
NOFILE="$(ulimit -Hn)"
[ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 65536 ] && NOFILE=65536
ulimit -n "$NOFILE" 2>/dev/null || true
NOFILE="$(ulimit -n)"
[ "$NOFILE" -ge 4096 ] || log "warning: only $NOFILE file descriptors per process; 1,000 streams may fail"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
# wait_match FILE REGEX SECONDS: prints the first match once it appears in FILE.
wait_match() {
  local file=$1 re=$2 secs=$3 m
  for _ in $(seq $((secs * 10))); do
    m="$(grep -aoE "$re" "$file" 2>/dev/null | head -n 1 || true)"
    [ -n "$m" ] && { printf '%s\n' "$m"; return 0; }
    sleep 0.1
  done
  return 1
}
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
alive() { kill -0 "$1" 2>/dev/null || die "$2 exited (see above)"; }

# --- mock upstream ---------------------------------------------------------------------------
"$BIN/poolgate-mock-upstream" --listen 127.0.0.1:0 --record 0 >"$TMP/mock.out" 2>"$TMP/mock.err" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
MOCK="$(wait_match "$TMP/mock.out" 'http://127\.0\.0\.1:[0-9]+' 20)" || die "the mock upstream did not start"
MOCK_HOSTPORT="${MOCK#http://}"
log "mock upstream on $MOCK"

# --- nginx: the reference proxy hop ----------------------------------------------------------
NGINX_PORT="$(free_port)"
mkdir -p "$TMP/nginx"
NGINX_USER=""
[ "$(id -u)" -eq 0 ] && NGINX_USER="user root root;"
cat >"$TMP/nginx/nginx.conf" <<EOF
$NGINX_USER
worker_processes auto;
worker_rlimit_nofile $NOFILE;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections $((NOFILE / 2)); }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/client_body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  tcp_nodelay on;
  keepalive_timeout 300s;
  keepalive_requests 10000000;
  upstream mock {
    server $MOCK_HOSTPORT;
    keepalive 64;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
EOF
"$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" -g 'daemon off;' \
  >"$TMP/nginx/stdout" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NGINX_PORT" || die "nginx did not start"
log "nginx on http://127.0.0.1:$NGINX_PORT (proxy_pass to the mock, upstream keepalive 64)"

# --- poolgate standalone ---------------------------------------------------------------------
# The control plane's OAuth and usage calls go to the mock too: nothing leaves loopback.
POOLGATE_OAUTH_ISSUER="$MOCK" POOLGATE_USAGE_BASE_URL="$MOCK/backend-api" \
POOLGATE_LOG="${POOLGATE_LOG:-warn,poolgate=info,poolgate_control=info,poolgate_gateway=info}" \
  "$DIST/poolgate" standalone --data-dir "$TMP/data" --grpc-listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 --gateway-listen 127.0.0.1:0 --gateway-admin-listen 127.0.0.1:0 \
  >"$TMP/poolgate.out" 2>"$TMP/poolgate.log" &
GW_PID=$!
PIDS+=("$GW_PID")
GRPC="$(wait_match "$TMP/poolgate.log" 'grpc_listen=[0-9.]+:[0-9]+' 30)" || { alive "$GW_PID" poolgate; die "no grpc_listen= in the poolgate log"; }
GATEWAY="$(wait_match "$TMP/poolgate.log" 'gateway_listen=[0-9.]+:[0-9]+' 30)" || { alive "$GW_PID" poolgate; die "no gateway_listen= in the poolgate log"; }
GRPC="http://${GRPC#grpc_listen=}"
GATEWAY="http://${GATEWAY#gateway_listen=}"
log "poolgate standalone (pid $GW_PID): gateway $GATEWAY, gRPC $GRPC"

# --- a dedicated gateway following the same control plane over gRPC ---------------------------
# Its RSS is the gateway's alone (standalone also holds the control plane's copy of the state);
# the large-snapshot load goes through it.
[ -s "$TMP/data/node.token" ] || die "standalone wrote no node token to $TMP/data/node.token"
POOLGATE_LOG="${POOLGATE_LOG:-warn,poolgate=info,poolgate_gateway=info}" \
  "$DIST/poolgate" gateway --control-url "$GRPC" --node-token-file "$TMP/data/node.token" \
  --node-id bench-gateway --gateway-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  >"$TMP/gateway.out" 2>"$TMP/gateway.log" &
GW2_PID=$!
PIDS+=("$GW2_PID")
GATEWAY2="$(wait_match "$TMP/gateway.log" 'gateway_listen=[0-9.]+:[0-9]+' 30)" || { alive "$GW2_PID" "poolgate gateway"; die "no gateway_listen= in the gateway log"; }
GATEWAY2="http://${GATEWAY2#gateway_listen=}"
log "poolgate gateway (pid $GW2_PID): $GATEWAY2"

# --- one OpenAI-key account, one Codex account, a platform key for each ---------------------
export POOLGATE_SERVER="$GRPC" POOLGATE_TOKEN_FILE="$TMP/data/admin.token"
printf 'sk-bench-openai-%s\n' "$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')" >"$TMP/openai.key"
"$BIN/poolctl" create account --provider openai --name bench-openai --group default \
  --base-url "$MOCK/v1" --api-key-file "$TMP/openai.key" >/dev/null
python3 - "$MOCK" "$TMP/codex-auth.json" <<'EOF'
import json, sys, urllib.request
mock, out = sys.argv[1], sys.argv[2]
req = urllib.request.Request(
    mock + "/__mock/tokens",
    data=json.dumps({"email": "bench@example.com", "account_id": "acct-bench"}).encode(),
    headers={"content-type": "application/json"}, method="POST")
with urllib.request.urlopen(req, timeout=10) as r:
    t = json.load(r)
doc = {"tokens": {k: t[k] for k in ("id_token", "access_token", "refresh_token", "account_id")}}
with open(out, "w") as f:
    json.dump(doc, f)
EOF
chmod 600 "$TMP/codex-auth.json"
"$BIN/poolctl" create account --provider codex --name bench-codex --group codex \
  --base-url "$MOCK/backend-api/codex" --auth-json-file "$TMP/codex-auth.json" >/dev/null
key_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'; }
"$BIN/poolctl" create key --name bench-openai --group default -o json | key_of >"$TMP/key-openai"
"$BIN/poolctl" create key --name bench-codex --group codex -o json | key_of >"$TMP/key-codex"
chmod 600 "$TMP"/key-*
log "accounts and keys created"

SUITE_ARGS=(
  --mock "$MOCK" --nginx "http://127.0.0.1:$NGINX_PORT" --gateway "$GATEWAY"
  --gateway-pid "$GW_PID" --grpc "$GRPC" --admin-token-file "$TMP/data/admin.token"
  --openai-key-file "$TMP/openai.key" --codex-auth-file "$TMP/codex-auth.json"
  --platform-key-file "$TMP/key-openai" --codex-platform-key-file "$TMP/key-codex"
  --rate "$RATE" --latency-secs "$LATENCY_SECS" --streams "$STREAMS" --connections "$CONNECTIONS"
  --throughput-rounds "$THROUGHPUT_ROUNDS"
  --bulk-accounts "$ACCOUNTS" --bulk-keys "$KEYS"
  --dedicated-gateway "$GATEWAY2" --dedicated-gateway-pid "$GW2_PID"
  --own-pid "$MOCK_PID" --own-pid "$NGINX_PID"
)
# Standalone writes the node token gateways use to DATA_DIR/node.token: with it the suite
# watches the snapshot stream like a gateway and weighs a one-account delta.
[ -s "$TMP/data/node.token" ] && SUITE_ARGS+=(--node-token-file "$TMP/data/node.token")
[ -n "${BENCH_JSON:-}" ] && SUITE_ARGS+=(--json "$BENCH_JSON")
alive "$GW_PID" poolgate
# In the background + wait, so a SIGINT/SIGTERM runs the cleanup at once (bash defers traps
# until a foreground child exits).
timeout 900 "$BIN/poolgate-bench" suite "${SUITE_ARGS[@]}" &
SUITE_PID=$!
PIDS+=("$SUITE_PID")
wait "$SUITE_PID"
log "done in ${SECONDS}s (build included)"
