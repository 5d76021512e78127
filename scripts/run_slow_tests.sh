#!/usr/bin/env bash
# The slow end-to-end tests the default suite leaves out (`python -m pytest -q` runs `-m 'not slow'`):
# driver SIGKILL + resume, Ctrl-C to the process group + resume, worker deaths, and the bad-input cases
# that start Ray, and the MLflow UI browser check (headless Chromium: apt-get install chromium). Minutes
# each; run before a release or after touching bib_ray/distributed or the MLflow UI address.
#   scripts/run_slow_tests.sh            # all of them
#   scripts/run_slow_tests.sh -k ctrl_c  # extra pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -m slow --durations=15 "$@"
