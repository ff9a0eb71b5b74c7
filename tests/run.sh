#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine (Chromium for the
# browser test), then runs every unit, integration and browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1 && [ -z "${CHROMIUM:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium for the browser test..."
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "chromium not found: the browser test will be skipped (it fails under CI=true)" >&2
    fi
fi

cargo test --locked "$@"
