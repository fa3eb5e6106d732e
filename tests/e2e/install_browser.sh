#!/usr/bin/env bash
# Install headless Chromium and its WebDriver (Debian packages) for tests/e2e/test_ui_browser.py.
# Idempotent: does nothing when both are present. Needs root (or sudo) and the Debian mirrors.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install_browser.sh: need root or sudo to apt-get install chromium chromium-driver" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium chromium-driver
command -v chromium >/dev/null && command -v chromedriver >/dev/null
