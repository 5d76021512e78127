#!/usr/bin/env bash
# Regenerates every figure README.md's Results section quotes, on a fresh cache, with the README's own
# commands, and records each command's wall time. Run it from the repository root after installing:
#   bash scripts/measure_readme.sh [OUT_DIR]
# OUT_DIR (default ./readme_figures) receives one log per command, the report folders and timings.txt.
# Why a script: a README table that no fresh install reproduces is worse than none; this is the one way
# the figures are made, so anyone can make them again (about two and a half hours on 2 CPU cores).
# BIB_RAY_MEASURE_STEPS picks parts (default: quick kernel_paths study tf_panel); each run of the script starts from an
# empty cache, so a part measured alone pays its own pre-training. BIB_RAY_MEASURE_TASKS=tfbind8 limits
# the study to TFBind8.
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
steps=" ${BIB_RAY_MEASURE_STEPS:-quick kernel_paths study tf_panel} "
wants() { [[ "$steps" == *" $1 "* ]]; }
# 1. The README's first command, on an empty cache (its three LMs pre-trained inside the timing).
wants quick && timed quick bib-ray ablate ablations/quick.yaml --tracking-uri "$uri" --output quick_report
# 1b. The same plan on the other CPU kernel path (AVX2 on an AVX-512 machine, else the scalar default
#     kernels), on an empty cache of its own and a store of its own: the verdict columns must agree.
if wants kernel_paths; then
  other=$(python -c "import torch; c = torch.backends.cpu.get_cpu_capability(); print('avx2' if 'AVX512' in c else 'default')")
  mkdir -p kernel_path
  (cd kernel_path && BIB_RAY_CACHE="$out/kernel_path/cache" ATEN_CPU_CAPABILITY="$other" timed "quick_$other" \
     bib-ray ablate ../ablations/quick.yaml --tracking-uri "sqlite:///$out/kernel_path/mlruns.db" --output quick_report \
     && cat timings.txt >> ../timings.txt)
  python "$OLDPWD/scripts/compare_verdicts.py" quick_report/conclusions.csv kernel_path/quick_report/conclusions.csv \
    | tee kernel_paths.txt
fi
# 2. The paper's study with LM replicates (TFBind8 and AAV, their six default LMs pre-trained inside the
#    timing; TFBind8 alone with BIB_RAY_MEASURE_TASKS=tfbind8), then the offline-model-selection search
#    on the same LMs and its agreement report, per task.
tasks="${BIB_RAY_MEASURE_TASKS:-tfbind8 aav}"
if wants study; then
  if [ "$tasks" = tfbind8 ]; then plan=bib_variants_tfbind8; else plan=bib_variants; fi
  timed "$plan" bib-ray ablate "ablations/$plan.yaml" --tracking-uri "$uri" --output "${plan}_report"
  for task in $tasks; do
    timed "criteria_$task" bib-ray search "search_spaces/criteria_$task.yaml" --tracking-uri "$uri" \
      --best-output "best_$task.yaml"
    timed "agreement_$task" bib-ray report "criteria_$task" --tracking-uri "$uri" --output "agreement_$task"
  done
fi
# 3. The TF panel (issue 14): six reference TFs, two LMs each, pre-trained inside the timing.
wants tf_panel && timed tf_panel bib-ray ablate ablations/tf_panel.yaml --tracking-uri "$uri" --output tf_panel_report
echo "figures in $out (timings.txt, *.log, *_report/, agreement_*/)"
