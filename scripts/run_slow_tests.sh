#!/usr/bin/env bash
# The slow end-to-end tests the default suite leaves out (`python -m pytest -q` runs
# `-m 'not slow and not fault'`): the MLflow UI browser check (headless Chromium: apt-get install chromium),
# the `ray up` cluster end-to-end, the two-node cluster, the bad-input cases that start Ray, a second
# Ray job (--force, a fresh search) and the README's first command on the shipped ablations/quick.yaml.
# Minutes each; run before a release or after touching bib_ray/distributed or the MLflow UI address.
# The fault tests (kill, Ctrl-C, worker death + --resume) are CI's: `pytest -q -m fault`.
#   scripts/run_slow_tests.sh            # all of them
#   scripts/run_slow_tests.sh -k browser  # extra pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -m slow --durations=15 "$@"
