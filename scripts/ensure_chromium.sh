#!/usr/bin/env bash
# Make sure a headless Chromium and its chromedriver are present for the browser tests (tests never
# install anything). Defaults to Debian's /usr/bin/chromium and /usr/bin/chromedriver; set
# NNOPS_CHROMIUM / NNOPS_CHROMEDRIVER to use another build (GitHub's runners ship Google Chrome).
set -euo pipefail
browser="${NNOPS_CHROMIUM:-/usr/bin/chromium}"
driver="${NNOPS_CHROMEDRIVER:-/usr/bin/chromedriver}"
if [ -x "$browser" ] && [ -x "$driver" ]; then exit 0; fi
if [ -n "${NNOPS_CHROMIUM:-}${NNOPS_CHROMEDRIVER:-}" ]; then
  echo "error: $browser or $driver is missing or not executable (NNOPS_CHROMIUM / NNOPS_CHROMEDRIVER)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
  echo "installing Debian's chromium and chromium-driver for the browser tests" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "error: $browser is missing; install Debian's 'chromium' and 'chromium-driver' packages" >&2
  exit 1
fi
