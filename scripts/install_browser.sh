#!/bin/sh
# Install headless Chromium for the report's browser test (tests/report/test_report_browser.py).
#
# - Already installed (/usr/bin/chromium or $CHROMIUM runs): says so and exits 0 at once.
# - Root with apt-get: installs Debian's `chromium` package (Playwright then drives
#   /usr/bin/chromium; `playwright install` is not needed and may not reach the internet).
# - Otherwise: prints how to install it and exits 0 (the browser test then skips itself).
#
# Usage: sh scripts/install_browser.sh      (idempotent; quick when already installed)
set -u

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ] && "$CHROMIUM" --version >/dev/null 2>&1; then
    echo "install_browser: $("$CHROMIUM" --version 2>/dev/null) already installed at $CHROMIUM"
    exit 0
fi

if [ "$(id -u)" != "0" ]; then
    echo "install_browser: $CHROMIUM not found and not running as root; skipping."
    echo "  To run the browser test, install Chromium yourself, e.g.: sudo apt-get install -y chromium"
    echo "  (tests marked 'browser' skip themselves without it)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: $CHROMIUM not found and apt-get is not available; skipping."
    echo "  Install a Chromium build at $CHROMIUM (or set CHROMIUM=...) to run the browser test."
    exit 0
fi

echo "install_browser: installing Debian's chromium package with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    if [ -x "$CHROMIUM" ]; then
        echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null)"
    else
        echo "install_browser: apt-get installed chromium, but $CHROMIUM is missing; the browser test will skip."
    fi
else
    echo "install_browser: apt-get could not install chromium; the browser test will skip."
fi
exit 0
