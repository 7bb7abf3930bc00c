#!/usr/bin/env bash
# Make sure Debian's headless Chromium is present for the browser tests (tests never install anything).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium for the browser tests" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "error: /usr/bin/chromium is missing; install Debian's 'chromium' package (browser tests need it)" >&2
  exit 1
fi
