#!/usr/bin/env bash
# Run the whole pipeline on the embedded default store and check it is then up to date.
# Shared by .ci/run and .github/workflows/ci.yml.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
if [ -x .venv/bin/dvc ]; then PATH="$PWD/.venv/bin:$PATH"; fi
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 GX_ANALYTICS_ENABLED=false

# With a DVC remote (CI secret DVC_REMOTE_URL), stages that match a run in the pulled run-cache
# are restored, their outputs fetched from the remote, instead of rerun.
dvc repro ${DVC_REMOTE_URL:+--pull}
# A second look must find nothing to do: every output is recorded in dvc.lock.
if ! dvc status --quiet; then
  dvc status >&2
  echo "ci_pipeline: error: 'dvc status' reports changes right after 'dvc repro'" >&2
  exit 1
fi
