#!/usr/bin/env bash
# The pipeline's stages in DAG order, without DVC, on a machine with a CUDA GPU (or where DVC is
# not installed): a tiny smoke run on the GPU first, which fails fast if a CUDA code path is
# broken, then the whole pipeline on PROFILE. Prints a timing line per stage and copies the
# results into OUT_DIR as they appear (a job killed at its time limit still leaves them).
#
#   usage: scripts/gpu_run.sh OUT_DIR [PROFILE]          (PROFILE default: gpu)
#   needs: data/dataset.h5 from `cdae prepare-data` (the profile's data settings), run from the
#          repository root with cdae importable (pip install -e . or PYTHONPATH=.)
#   more:  a models/model.pt of the same settings is trained on from its step, also the EMA
#          weights alone that a previous run returned (`cat model.pt.part-* > models/model.pt`):
#          several time-boxed jobs add up to one longer training run
#   env:   DEVICE (default cuda): the smoke run's device; TRAIN_MINUTES overrides
#          train.max_minutes; SMOKE=0 skips the smoke run; CURVES=0 turns evaluate's guidance
#          and step curves off (a params copy with evaluate.sweep_* = [] everywhere);
#          PREDICTORS=0 keeps the models/predictors.pt already there (trained anywhere: they need
#          no GPU) instead of training them beside the model; COMPILE=1 sets train.compile
#          (torch.compile of the whole loss) in the profile; COMPILE_MODE=reduce-overhead
#          (or default) sets train.compile_mode; UNTIL=train stops once the weights are
#          returned, UNTIL=evaluate after the evaluate stage; PYTHON (default python3)
#
# On one H100 (2026-11-26, profile gpu): smoke 52 s, train 5.5 min + 11 s, evaluate 169 s
# without the curves and about 2 minutes more with them. On one H200 (2026-11-26, SMOKE=0
# CURVES=0 TRAIN_MINUTES=3.5, continuing a returned model.pt): 419 s in all (train 220 s,
# evaluate 151 s with factual guidance, the rest about 45 s).
# On one H100 (2026-11-28, SMOKE=0 CURVES=0 PREDICTORS=0 UNTIL=train, compile_mode
# reduce-overhead): the gpu profile's whole 12,000 steps in 317 s (a 288 s training loop).
#
# OUT_DIR receives: train.json, train_log.csv, metrics.json, evaluation.md, results.tar.gz
# (figures, curves, report.html, predictor errors) and model.pt.part-* (the EMA weights alone,
# in parts of at most 16 MiB: `cat model.pt.part-* > models/model.pt`).
set -euo pipefail

out=${1:?usage: scripts/gpu_run.sh OUT_DIR [PROFILE]}
profile=${2:-gpu}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
export DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
[[ -f data/dataset.h5 ]] || { echo "error: data/dataset.h5 not found; run \`cdae prepare-data\` first" >&2; exit 2; }

cdae() { "$py" -m cdae "$@"; }
timed() {  # timed LABEL CMD...: run CMD, then print how long it took
    local label=$1 start=$SECONDS
    shift
    "$@"
    echo "timing: $label $((SECONDS - start)) s" >&2
}

params_copy() {  # params_copy DEST smoke|edit: params.yaml with outputs under DEST's folder
    # (smoke), or (edit) with evaluate's curves off (CURVES=0), train.compile on (COMPILE=1)
    # and train.compile_mode set (COMPILE_MODE) in the base and every profile
    "$py" - "$@" <<'EOF'
import os
import sys
from pathlib import Path

import yaml

dest, kind = Path(sys.argv[1]), sys.argv[2]
with open("params.yaml") as f:
    d = yaml.safe_load(f)
if kind == "smoke":
    root = dest.parent
    d["paths"].update(model_dir=f"{root}/models", latents=f"{root}/latents.h5",
                      counterfactuals_dir=f"{root}/cf", figures_dir=f"{root}/figures",
                      metrics=f"{root}/metrics.json", report_dir=f"{root}/reports")
else:
    for section in [d, *d.get("profiles", {}).values()]:
        if os.environ.get("CURVES", "1") == "0":
            section.setdefault("evaluate", {}).update(sweep_guidance=[], sweep_steps=[])
        if os.environ.get("COMPILE", "0") == "1":
            section.setdefault("train", {}).update(compile=True)
        if os.environ.get("COMPILE_MODE"):
            section.setdefault("train", {}).update(compile_mode=os.environ["COMPILE_MODE"])
with open(dest, "w") as f:
    yaml.safe_dump(d, f, sort_keys=False)
EOF
}

"$py" - <<'EOF'
import torch
print(f"torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
EOF

if [[ ${SMOKE:-1} != 0 ]]; then
    # the tiny profile's model and steps on the real dataset, every stage on $device
    smoke=$(mktemp -d)
    params_copy "$smoke/params.yaml" smoke
    s=(--params "$smoke/params.yaml" --profile tiny)
    timed smoke-train cdae train "${s[@]}" --device "$device"
    timed smoke-predictors cdae train-predictors "${s[@]}"
    timed smoke-encode cdae encode-latents "${s[@]}" --device "$device"
    timed smoke-intervene cdae intervene "${s[@]}" --var thickness --value 2.5 --device "$device"
    timed smoke-evaluate cdae evaluate "${s[@]}" --device "$device" > /dev/null
    echo "smoke run passed"
fi

params=params.yaml
if [[ ${CURVES:-1} == 0 || ${COMPILE:-0} == 1 || -n ${COMPILE_MODE:-} ]]; then
    params=$(mktemp -d)/params.yaml
    params_copy "$params" edit
fi
p=(--params "$params" --profile "$profile")
minutes=()
[[ -n ${TRAIN_MINUTES:-} ]] && minutes=(--max-minutes "$TRAIN_MINUTES")
# the predictors need no model: they train on the CPU while the GPU trains the model
if [[ ${PREDICTORS:-1} == 0 ]]; then
    [[ -f models/predictors.pt ]] || { echo "error: PREDICTORS=0 but models/predictors.pt not found; run \`cdae train-predictors\` first" >&2; exit 2; }
    echo "PREDICTORS=0: kept models/predictors.pt" > "$out/predictors.txt"
    predictors=
else
    timed predictors cdae train-predictors "${p[@]}" > "$out/predictors.txt" 2>&1 &
    predictors=$!
fi
timed train cdae train "${p[@]}" "${minutes[@]}"
cp models/train.json models/train_log.csv "$out/"
"$py" - "$out" <<'EOF'
import sys

import torch

from cdae.checkpoint import load_checkpoint, save_checkpoint

ck = load_checkpoint("models/model.pt")
slim = {k: v for k, v in ck.items() if k not in ("model", "optimizer", "format",
                                                 "schema_version", "versions")}
save_checkpoint(f"{sys.argv[1]}/model.pt", slim)
EOF
split -b 16700000 -d "$out/model.pt" "$out/model.pt.part-" && rm "$out/model.pt"
[[ -z $predictors ]] || wait "$predictors"
cat "$out/predictors.txt"
if [[ ${UNTIL:-} == train ]]; then
    echo "done (UNTIL=train): $out"
    exit 0
fi
timed evaluate cdae evaluate "${p[@]}"
cp reports/metrics.json reports/evaluation.md "$out/"
if [[ ${UNTIL:-} == evaluate ]]; then
    echo "done (UNTIL=evaluate): $out"
    exit 0
fi
timed encode cdae encode-latents "${p[@]}"
for name in thickness_2 thickness_4 intensity_120; do
    timed "intervene-$name" cdae intervene "${p[@]}" --name "$name" --skip-foreign
done
timed render cdae render "${p[@]}"
timed report cdae report "${p[@]}"
mv "$out/predictors.txt" reports/
tar -czf "$out/results.tar.gz" reports
echo "done: $out"
