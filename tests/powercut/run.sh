#!/usr/bin/env bash
# The power-loss test (issue 16): lazyfs's own tests, the harness's tests against a stand-in
# server, then Kura through KURA_POWERCUT_CYCLES power cuts (default 3; the long mode is >= 50,
# e.g. KURA_POWERCUT_CYCLES=50). KURA_POWERCUT_DELETES=1 mixes DELETE requests in;
# KURA_POWERCUT_SEED=N replays a run. Installs what it needs (Debian's libfuse3-3, the Python
# packages of requirements.txt); skips only when /dev/fuse is absent. See README.md here.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -e /dev/fuse ]; then
  echo "tests/powercut: SKIPPED: /dev/fuse is absent, so no FUSE file system can be mounted here"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
need=()
if ! ldconfig -p | grep -q 'libfuse3\.so\.3'; then need+=(libfuse3-3); fi
# As root lazyfs mounts directly; anyone else needs the setuid fusermount3 of Debian's fuse3.
if [ -n "$sudo" ] && ! command -v fusermount3 >/dev/null; then need+=(fuse3); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "tests/powercut: installing Debian's ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
python3 -m pip install --quiet --disable-pip-version-check -r tests/powercut/requirements.txt
KURA_BIN="${KURA_BIN:-$PWD/target/release/kura}"
if [ ! -x "$KURA_BIN" ]; then
  echo "tests/powercut: Kura binary $KURA_BIN not found: cargo build --release, or set KURA_BIN" >&2
  exit 2
fi
python3 -m pytest -q -p no:cacheprovider tests/powercut
KURA_BIN="$KURA_BIN" python3 tests/powercut/run.py
