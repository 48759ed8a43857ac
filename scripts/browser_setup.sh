#!/usr/bin/env bash
# Install the browser the dashboard's browser tests drive: Debian's `chromium` (Playwright for
# Python launches it by path; it never downloads a browser of its own). Idempotent and silent
# when present; without root or apt it prints the command to run instead (exit 1, so CI
# notices).
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi
install_cmd="apt-get install -y --no-install-recommends chromium"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "browser setup: installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
    exit 0
fi
echo "browser setup: chromium is missing; as root run: apt-get update && $install_cmd" >&2
exit 1
