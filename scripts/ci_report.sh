#!/usr/bin/env bash
# Print a Markdown report of what the workspace changes against a base revision: DVC metrics and
# params diffs and the fit verdict. Shared by .ci/run and .github/workflows/ci.yml.
#
#   scripts/ci_report.sh [BASE]   BASE: a git revision (default HEAD); missing -> HEAD, with a note
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
if [ -x .venv/bin/dvc ]; then PATH="$PWD/.venv/bin:$PATH"; fi
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 GX_ANALYTICS_ENABLED=false

base="${1:-HEAD}"
note=""
if ! git rev-parse --verify --quiet "${base}^{commit}" >/dev/null; then
  note="Base \`${base}\` was not found in this clone; compared with \`HEAD\` instead."
  base=HEAD
fi
if [ ! -f reports/metrics.json ]; then
  echo "ci_report: error: reports/metrics.json is missing; run 'dvc repro' first" >&2
  exit 1
fi

echo "## nnops pipeline report"
echo
echo "Workspace compared with \`${base}\` ($(git rev-parse --short "${base}"))."
if [ -n "$note" ]; then echo; echo "$note"; fi
echo
echo "### Fit verdict"
echo
python "$(dirname "$0")/ci_verdict.py"
echo
echo "### Metrics"
echo
dvc metrics diff "$base" --all --md --precision 4
echo
echo "### Params"
echo
params="$(dvc params diff "$base" --md)"
# An unchanged diff is an empty table: a header and a rule, no rows.
if [ "$(printf '%s\n' "$params" | grep -c '^|')" -le 2 ]; then
  echo "No params changed."
else
  echo "$params"
fi
