#!/usr/bin/env bash
# What the tests need beyond cargo: Debian's Chromium (/usr/bin/chromium) and playwright-core
# (pinned in web/test/package.json and package-lock.json) in web/test/node_modules, for
# gate/tests/browser.rs. Idempotent: installs only what is missing; a second run does nothing.
# Node.js 20+ and npm must be on PATH. No browser is downloaded by npm (playwright-core has no
# install script; the test drives the Debian package).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "test-deps: node and npm are required (Node.js 20 or later)" >&2
    exit 1
fi

chromium=${IMGATE_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null; then
        as_root=(sudo)
    else
        echo "test-deps: $chromium is missing and this user can't install it: run as root, or" \
            "install Debian's chromium package (apt-get install chromium)" >&2
        exit 1
    fi
    echo "test-deps: installing Debian's chromium"
    start=$SECONDS
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    echo "test-deps: chromium installed in $((SECONDS - start)) s"
fi

want=$(node -p "require('./web/test/package.json').dependencies['playwright-core']")
have=$(node -p "try { require('./web/test/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$have" != "$want" ]; then
    echo "test-deps: installing playwright-core $want into web/test/node_modules"
    (cd web/test && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "test-deps: $("$chromium" --version 2>/dev/null || echo "$chromium"), playwright-core $want, node $(node --version)"
