#!/usr/bin/env bash
# Usage: bash hw5.sh <food_dir> <out_dir>     explain your checkpoint on a Food-11 folder
#        bash hw5.sh                          the bundled demo: sample set + sample checkpoint
# No interaction. Writes every report figure, its .npz arrays, manifest.json and report.pdf.
set -euo pipefail

# The one place your checkpoint's location is configured: a Google Drive link or file id
# (uploaded with "anyone with the link"). $HW5_CHECKPOINT (a local file) wins over it.
CHECKPOINT_URL="${HW5_CHECKPOINT_URL:-}"
# The assignment fails a run past 10 minutes: plan the work to finish in 9 (seconds).
budget="${HW5_BUDGET:-540}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$here/.venv/bin/python" ]; then py="$here/.venv/bin/python"; else py="python3"; fi
fi

# Your answers to Q1-Q4 (hw5.py report --help, --notes): set into report.pdf when present.
notes=()
if [ -f "$here/report_notes.md" ]; then notes=(--notes "$here/report_notes.md"); fi

# The submitted run's manifest (copy out_dir/manifest.json there): a grader's rerun makes the
# same decisions (samples, steps, filters, cuts) and so the same figures (--replay). HW5_REPLAY=off
# decides afresh.
replay=()
if [ -f "$here/submitted/manifest.json" ] && [ "${HW5_REPLAY:-on}" != "off" ]; then
  replay=(--replay "$here/submitted/manifest.json")
fi

if [ "$#" -eq 0 ]; then
  exec "$py" "$here/hw5.py" report --budget "$budget" --preset all-figures ${notes[@]+"${notes[@]}"}
fi
if [ "$#" -lt 2 ]; then
  echo "usage: bash hw5.sh <food_dir> <out_dir> [hw5.py report options]   (or no arguments for the bundled demo)" >&2
  exit 2
fi
data="$1" out="$2"
shift 2
exec "$py" "$here/hw5.py" report "$data" "$out" --checkpoint-url "$CHECKPOINT_URL" --budget "$budget" \
  ${notes[@]+"${notes[@]}"} ${replay[@]+"${replay[@]}"} "$@"
