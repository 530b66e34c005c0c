#!/usr/bin/env bash
# What the tests need beyond cargo: Debian's Chromium (/usr/bin/chromium) and playwright-core
# (pinned in web/test/package.json and package-lock.json) in web/test/node_modules, for
# gate/tests/browser.rs. Idempotent: installs only what is missing; a second run does nothing.
# Node.js (20+, for playwright-core) and npm come from Debian when missing. No browser is downloaded by npm (playwright-core has no
# install script; the test drives the Debian package).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, as root (or with sudo); apt-get update once, only when something is missing.
updated=
apt_install() {
    local as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then
            as_root=(sudo)
        else
            echo "test-deps: $* missing and this user can't install it: run as root, or" \
                "apt-get install $*" >&2
            exit 1
        fi
    fi
    echo "test-deps: installing Debian's $*"
    local start=$SECONDS
    if [ -z "$updated" ]; then
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        updated=1
    fi
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    echo "test-deps: $* installed in $((SECONDS - start)) s"
}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "test-deps: Node.js 20 or later is needed (playwright-core) (found $(node --version))" >&2
    exit 1
fi

chromium=${IMGATE_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
    apt_install chromium
fi

want=$(node -p "require('./web/test/package.json').dependencies['playwright-core']")
have=$(node -p "try { require('./web/test/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$have" != "$want" ]; then
    echo "test-deps: installing playwright-core $want into web/test/node_modules"
    (cd web/test && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "test-deps: $("$chromium" --version 2>/dev/null || echo "$chromium"), playwright-core $want, node $(node --version)"
