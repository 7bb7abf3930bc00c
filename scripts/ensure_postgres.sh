#!/usr/bin/env bash
# Make sure PostgreSQL's server programs (initdb, pg_ctl) are installed for the team-mode tests,
# which start a throwaway cluster themselves (tests never install anything). GitHub's runners and
# these machines ship them under /usr/lib/postgresql/<major>/bin; NNOPS_PG_BIN points elsewhere.
set -euo pipefail
if [ -n "${NNOPS_PG_BIN:-}" ]; then
  [ -x "$NNOPS_PG_BIN/initdb" ] && exit 0
  echo "error: $NNOPS_PG_BIN/initdb is missing (NNOPS_PG_BIN)" >&2
  exit 1
fi
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then exit 0; fi
sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
  echo "installing Debian's postgresql for the team-mode tests" >&2
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
else
  echo "error: PostgreSQL is missing; install Debian's 'postgresql' package or set NNOPS_PG_BIN" >&2
  exit 1
fi
