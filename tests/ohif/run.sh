#!/usr/bin/env bash
# The OHIF end-to-end test, from a fresh Debian machine: installs Debian's Chromium (and Node.js)
# when missing, runs setup.sh (OHIF build + playwright-core), then the tests with node's runner,
# one file after the other: ohif.test.mjs (OHIF on Kura's DICOMweb root) and share-link.test.mjs
# (OHIF on a share link's root, the only credential, on a server that requires authentication).
# Kura must be built: release/kura in cargo's target directory, or the binary named by KURA_BIN.
#   tests/ohif/run.sh            (from anywhere; exit status is the test's)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "run.sh: installing Node.js and npm from Debian"
  apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "run.sh: Node.js $(node --version) is too old: playwright-core needs Node.js 20 or later" >&2
  exit 1
fi

chromium="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  echo "run.sh: installing Debian's chromium"
  apt_install chromium
fi

"$here/setup.sh"

if [ -z "${KURA_BIN:-}" ]; then
  # cargo's target directory: ./target, or $CARGO_TARGET_DIR / build.target-dir when set.
  target_dir="$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  export KURA_BIN="$target_dir/release/kura"
fi
kura="$KURA_BIN"
if [ ! -x "$kura" ]; then
  echo "run.sh: no Kura binary at $kura: run 'cargo build --release' first, or set KURA_BIN" >&2
  exit 1
fi

cd "$repo"
exec node --test --test-concurrency=1 tests/ohif/ohif.test.mjs tests/ohif/share-link.test.mjs
