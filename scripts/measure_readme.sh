#!/usr/bin/env bash
# Regenerates every figure README.md's Results section quotes, on a fresh cache, with the README's own
# commands, and records each command's wall time. Run it from the repository root after installing:
#   bash scripts/measure_readme.sh [OUT_DIR]
# OUT_DIR (default ./readme_figures) receives one log per command, the report folders and timings.txt.
# Why a script: a README table that no fresh install reproduces is worse than none; this is the one way
# the figures are made, so anyone can make them again (about an hour and a half on 2 CPU cores; BIB_RAY_MEASURE_TASKS=tfbind8 stops after TFBind8).
set -euo pipefail
out="$(realpath -m "${1:-readme_figures}")"
mkdir -p "$out"
export BIB_RAY_CACHE="$out/cache"
rm -rf "$BIB_RAY_CACHE"
cd "$out"
cp -r "$OLDPWD/ablations" "$OLDPWD/search_spaces" .
: > timings.txt

timed() {  # timed NAME COMMAND...: run, keep its output in NAME.log, append its wall time to timings.txt
  local name=$1; shift
  local start=$(date +%s)
  "$@" > "$name.log" 2>&1
  echo "$name $(( $(date +%s) - start )) s: $*" | tee -a timings.txt
}

uri="sqlite:///$out/mlruns.db"
# 1. The README's first command, on an empty cache (its three LMs pre-trained inside the timing).
timed quick bib-ray ablate ablations/quick.yaml --tracking-uri "$uri" --output quick_report
# 2. The paper's study with LM replicates, TFBind8 first (its three default LMs pre-trained inside the timing),
#    then the offline-model-selection search on the same LMs and its agreement report.
tasks="${BIB_RAY_MEASURE_TASKS:-tfbind8 aav}"
timed bib_variants_tfbind8 bib-ray ablate ablations/bib_variants_tfbind8.yaml --tracking-uri "$uri" \
  --output bib_variants_tfbind8_report
for task in $tasks; do
  if [ "$task" = aav ]; then  # the full study: TFBind8's LMs come from the cache, AAV's are pre-trained
    timed bib_variants bib-ray ablate ablations/bib_variants.yaml --tracking-uri "$uri" --output bib_variants_report
  fi
  timed "criteria_$task" bib-ray search "search_spaces/criteria_$task.yaml" --tracking-uri "$uri" \
    --best-output "best_$task.yaml"
  timed "agreement_$task" bib-ray report "criteria_$task" --tracking-uri "$uri" --output "agreement_$task"
done
echo "figures in $out (timings.txt, *.log, *_report/, agreement_*/)"
