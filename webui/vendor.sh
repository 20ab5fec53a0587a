#!/usr/bin/env bash
# Vendor the UI's two JavaScript libraries from the npm registry into webui/static/vendor/.
#
# The gateway never fetches anything at run time (no CDN): these files are committed, ship in
# the wheel and the Docker image, and are served from /static/vendor/. Run this script only to
# change a version; it pins exact versions and records each file's SHA-256 in SOURCES.txt,
# which tests/test_ui_assets.py checks.
#
#   bash webui/vendor.sh            # needs node's npm; writes webui/static/vendor/
set -euo pipefail

HTMX_VERSION=2.0.8        # htmx 2.x: attribute semantics differ in 4.x
CHARTJS_VERSION=4.5.1     # Chart.js 4 (UMD build, canvas only: no inline styles, no eval)

here="$(cd "$(dirname "$0")" && pwd)"
out="$here/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "htmx.org@$HTMX_VERSION" "chart.js@$CHARTJS_VERSION" >/dev/null
mkdir htmx chartjs
tar xzf "htmx.org-$HTMX_VERSION.tgz" -C htmx
tar xzf "chart.js-$CHARTJS_VERSION.tgz" -C chartjs

mkdir -p "$out"
cp htmx/package/dist/htmx.min.js "$out/htmx.min.js"
cp htmx/package/LICENSE "$out/htmx.LICENSE"
cp chartjs/package/dist/chart.umd.min.js "$out/chart.umd.min.js"
cp chartjs/package/LICENSE.md "$out/chart.js.LICENSE.md"

cd "$out"
{
  echo "# Vendored by webui/vendor.sh from the npm registry; do not edit by hand."
  echo "htmx.org $HTMX_VERSION"
  echo "chart.js $CHARTJS_VERSION"
  sha256sum htmx.min.js chart.umd.min.js
} > SOURCES.txt
cat SOURCES.txt
