#!/usr/bin/env bash
# Headless Chromium for tests/test_studio_browser.py: Debian's `chromium` and `chromium-driver` packages.
# (A test tool's own browser download does not work offline; selenium drives this system chromium.)
# Idempotent and quiet: does nothing when /usr/bin/chromium and /usr/bin/chromedriver are already there.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_browser.sh: no apt-get here; install chromium and its chromedriver yourself (the browser test skips without them)." >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "setup_browser.sh: run as root (apt-get install chromium chromium-driver)." >&2
        exit 1
    fi
fi
echo "Installing chromium + chromium-driver (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# no recommends (printer and desktop tools); fonts-liberation so text renders in screenshots
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null
/usr/bin/chromium --version
