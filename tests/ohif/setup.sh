#!/usr/bin/env bash
# Installs what the OHIF end-to-end test needs, idempotently:
#   - the prebuilt OHIF Viewer: the dist/ inside the @ohif/app npm package (version and
#     integrity pinned in package.json "ohif"), unpacked into .cache/ohif-app-VERSION/;
#   - playwright-core, exactly as package-lock.json pins it (npm ci), into node_modules/.
# Chromium itself comes from Debian (run.sh installs it); playwright never downloads a browser.
set -euo pipefail
cd "$(dirname "$0")"

read -r ohif_package ohif_version ohif_integrity < <(node -e '
  const { ohif } = require("./package.json");
  console.log(ohif.package, ohif.version, ohif.integrity);
')
dest=".cache/ohif-app-${ohif_version}"
mkdir -p .cache

if [ -f "$dest/dist/index.html" ] && [ -f "$dest/dist/app-config.js" ]; then
  echo "setup: OHIF ${ohif_version} already in $dest"
else
  tmp=$(mktemp -d .cache/fetch.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  echo "setup: fetching ${ohif_package}@${ohif_version} with npm pack"
  tarball=$(cd "$tmp" && npm pack --silent --no-audit --no-fund "${ohif_package}@${ohif_version}" | tail -n 1)
  actual=$(node -e '
    const { createHash } = require("crypto");
    const bytes = require("fs").readFileSync(process.argv[1]);
    process.stdout.write("sha512-" + createHash("sha512").update(bytes).digest("base64"));
  ' "$tmp/$tarball")
  if [ "$actual" != "$ohif_integrity" ]; then
    echo "setup: integrity mismatch for $tarball: got $actual, package.json pins $ohif_integrity" >&2
    exit 1
  fi
  tar -xzf "$tmp/$tarball" -C "$tmp"
  if [ ! -f "$tmp/package/dist/index.html" ]; then
    echo "setup: $tarball has no dist/index.html" >&2
    exit 1
  fi
  rm -rf "$dest"
  mv "$tmp/package" "$dest"
  echo "setup: OHIF ${ohif_version} unpacked into $dest"
fi

want=$(node -p 'require("./package-lock.json").packages["node_modules/playwright-core"].version')
have=$(node -p 'try { require("./node_modules/playwright-core/package.json").version } catch { "" }')
if [ "$want" = "$have" ]; then
  echo "setup: playwright-core ${have} already installed"
else
  echo "setup: npm ci (playwright-core ${want})"
  # --ignore-scripts: playwright-core has no install script, and no browser is downloaded.
  npm ci --ignore-scripts --no-audit --no-fund
fi
