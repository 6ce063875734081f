#!/bin/sh
# Prints, as YAML, the four Secrets the kustomize base expects, with fresh random values:
#   poolgate-database        url             your PostgreSQL URL (from POOLGATE_DATABASE_URL)
#   poolgate-encryption-key  encryption.key  32 random bytes as 64 hex characters
#   poolgate-admin-token     admin.token     pga_ + 32 random bytes, unpadded base64url
#   poolgate-node-token      node.token      pgn_ + 32 random bytes, unpadded base64url
#
# Usage (once, before or after `kubectl apply -k manifests/`):
#   kubectl create namespace poolgate
#   POOLGATE_DATABASE_URL='postgres://poolgate:PASSWORD@db.example:5432/poolgate?sslmode=require' \
#     manifests/generate-secrets.sh poolgate | kubectl create -f -
#
# `kubectl create` (not apply) refuses to replace Secrets that exist: a new encryption key would
# make every stored credential unreadable. Keep a copy of the key somewhere safe.
set -eu

ns="${1:-poolgate}"
case "$ns" in
  *[!a-z0-9-]* | "" | -* | *-) echo "generate-secrets.sh: '$ns' is not a namespace name" >&2; exit 2 ;;
esac
if [ -z "${POOLGATE_DATABASE_URL:-}" ]; then
  echo "generate-secrets.sh: set POOLGATE_DATABASE_URL to your PostgreSQL URL (postgres://user:password@host:5432/db)" >&2
  exit 2
fi
case "$POOLGATE_DATABASE_URL" in
  postgres://* | postgresql://*) ;;
  *) echo "generate-secrets.sh: POOLGATE_DATABASE_URL must start with postgres:// or postgresql://" >&2; exit 2 ;;
esac

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
hex32() { head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n'; }
token() { printf '%s%s' "$1" "$(head -c 32 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_')"; }

secret() {
  cat <<YAML
---
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: $ns
  labels:
    app.kubernetes.io/name: poolgate
    app.kubernetes.io/instance: poolgate
    app.kubernetes.io/part-of: poolgate
type: Opaque
data:
  $2: $(b64 "$3")
YAML
}

secret poolgate-database url "$POOLGATE_DATABASE_URL"
secret poolgate-encryption-key encryption.key "$(hex32)"
secret poolgate-admin-token admin.token "$(token pga_)"
secret poolgate-node-token node.token "$(token pgn_)"
