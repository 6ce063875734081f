#!/bin/sh
# Writes the control plane's encryption key, admin token and node token on the first run and
# keeps them on later runs (the key encrypts stored credentials: a new one would make them
# unreadable). The node token is copied to a second directory, the only one gateways mount.
#
# Usage: init-secrets.sh CONTROL_DIR NODE_DIR
# Formats are what poolgate reads: 64 hex characters (32 bytes) for the key; `pga_`/`pgn_` and
# 32 random bytes in unpadded base64url for the tokens. Files are mode 0400, owned by uid 65532
# (the image's user) when run as root.
set -eu

control_dir="${1:?usage: init-secrets.sh CONTROL_DIR NODE_DIR}"
node_dir="${2:?usage: init-secrets.sh CONTROL_DIR NODE_DIR}"
owner="${POOLGATE_SECRETS_OWNER:-65532:65532}"
umask 077
mkdir -p "$control_dir" "$node_dir"

hex32() { head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n'; }
token() { printf '%s%s' "$1" "$(head -c 32 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_')"; }

# Writes $2 into $1 unless $1 already holds something; atomic, so a crash leaves no half file.
keep_or_write() {
  if [ -s "$1" ]; then
    echo "keeping $1"
    return 0
  fi
  printf '%s\n' "$2" > "$1.tmp"
  mv "$1.tmp" "$1"
  echo "wrote $1"
}

keep_or_write "$control_dir/encryption.key" "$(hex32)"
keep_or_write "$control_dir/admin.token" "$(token pga_)"
keep_or_write "$control_dir/node.token" "$(token pgn_)"
# Always in step with the control plane's copy.
cp "$control_dir/node.token" "$node_dir/node.token.tmp"
mv "$node_dir/node.token.tmp" "$node_dir/node.token"

for f in "$control_dir/encryption.key" "$control_dir/admin.token" "$control_dir/node.token" \
  "$node_dir/node.token"; do
  chmod 0400 "$f"
  if [ "$(id -u)" = 0 ]; then
    chown "$owner" "$f"
  fi
done
# Only the image's user may enter the directories.
chmod 0700 "$control_dir" "$node_dir"
if [ "$(id -u)" = 0 ]; then
  chown "$owner" "$control_dir" "$node_dir"
fi
