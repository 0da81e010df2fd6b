#!/usr/bin/env bash
# GPU check: one prepared script, under 8 minutes on one GPU. Needs only torch, torchvision,
# PyYAML, scikit-learn (digits), matplotlib and this checkout (no Ray, MLflow or Optuna, and the
# project need not be installed). Fails loudly (exit 1) without a CUDA GPU.
#   1. one search through `python -m trainables.cli` on CUDA (RepVGG-A0 at width 0.5 on digits at
#      32x32, bf16 autocast, channels_last, the fixed phase compiled): fused, verified by the
#      trial in strict fp32, then checked again here in float64 (max error <= 1e-9);
#   2. benchmarks/train_cost.py at 224x224, batch 64, channels_last on: RepVGG-A0 and ResNet-18,
#      plain / dbb / odbb@0.34, offline and online, fp32 and bf16, eager then compiled, in the
#      time left (rows that do not fit are listed as not measured);
#   3. the table, and the issue's GPU targets (online <= 1.2x plain step, <= 1.3x memory, bf16).
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${1:-$(mktemp -d /tmp/repnas-gpu-check.XXXX)}"
mkdir -p "$OUT"
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}  # the whole script, seconds
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

python - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "torchvision", "yaml", "sklearn", "matplotlib") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check FAILED: missing Python packages: {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check FAILED: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA GPU")
import trainables.cli  # noqa: F401 - the CLI path imports no Ray, MLflow or Optuna
leaked = [m for m in ("ray", "mlflow", "optuna") if m in sys.modules]
if leaked:
    sys.exit(f"gpu_check FAILED: importing trainables.cli imported {leaked}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
      f"{torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
COMPILE=on  # torch.compile on CUDA generates Triton kernels
if ! python -c "import triton" 2>/dev/null; then
  COMPILE=off
  echo "note: triton is not installed: torch.compile cannot target CUDA here; compiled rows are left out"
fi

echo "== 1. search on CUDA (bf16, channels_last, compile $COMPILE in the fixed phase) =="
timeout 210 python -m trainables.cli configs/quickstart.yaml --output "$OUT/search" \
  --set runtime.device=cuda --set runtime.precision=bf16 --set runtime.channels_last=true \
  --set runtime.compile=$([ "$COMPILE" = on ] && echo true || echo false) --set data.num_workers=auto --set data.image_size=32 \
  --set model.name=repvgg_a0 --set model.options.width_multiplier=0.5 --set data.batch_size=128 \
  --set search.epochs=6 --set search.random_epochs=2 --set search.search_epochs=2
python - "$OUT/search" <<'PY'
import json, sys
from pathlib import Path
import torch
from searchspace import reparameterize
from trainables import TrialConfig, build_data, load_checkpoint, make_loader
from trainables.run.build import build_trial_model

run = Path(sys.argv[1])
tensors, meta = load_checkpoint(run / "checkpoint")
cfg = TrialConfig.from_dict(meta["config"])
data = build_data(cfg.data, cfg.seed)
supernet = build_trial_model(cfg, data.num_classes, data.in_channels)
supernet.load_state_dict(tensors["model"])
supernet = supernet.to("cuda", torch.float64).eval()
inputs = next(iter(make_loader(data.val, 256, train=False)))[0].to("cuda", torch.float64)
with torch.no_grad():
    err = float((reparameterize(supernet)(inputs) - supernet(inputs)).abs().max())
final = json.loads((run / "summary.json").read_text())["final"]
times = [round(row["epoch_time_s"], 2) for row in meta["history"]]
print(f"search: epoch times {times} s, val_acc {final['val_acc']:.4f}, fused_val_acc {final['fused_val_acc']:.4f}, "
      f"trial's fp32 max logit diff {final['fused_max_logit_diff']:.2e}, float64 max error {err:.2e}, "
      f"peak {final['peak_memory_mb']:.0f} MB")
if err > 1e-9:
    sys.exit(f"gpu_check FAILED: the fused model differs from the supernet by {err:.3g} in float64")
PY

LIMIT=$(( $(left) - 15 ))
echo "== 2. step time and peak memory at 224x224, batch 64 (${LIMIT} s) =="
if [ "$LIMIT" -gt 30 ]; then
  timeout $(( LIMIT + 10 )) python benchmarks/train_cost.py --device cuda --models repvgg_a0 resnet18 --sizes 224 \
    --batch-size 64 --steps 10 --configs plain dbb odbb@0.34 --reparam offline online --precision bf16 fp32 \
    --channels-last on --compile off $([ "$COMPILE" = on ] && echo on) --time-limit "$LIMIT" --json "$OUT/train_cost.json" \
    | tee "$OUT/train_cost.log" | sed -n '/^| model/,$p'
  python - "$OUT/train_cost.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
print("\nGPU targets (bf16, channels_last, online vs offline plain of the same runtime):")
for label, runtimes in results.items():
    for runtime, forms in runtimes.items():
        plain = forms["offline"].get("plain")
        if not runtime.startswith("bf16") or not isinstance(plain, dict):
            continue
        for config, row in forms["online"].items():
            if isinstance(row, dict):
                step, memory = row["step_s"] / plain["step_s"], row["peak_mb"] / plain["peak_mb"]
                verdict = "met" if step <= 1.2 and memory <= 1.3 else "NOT met"
                print(f"  {label} {runtime:>16} online {config:>10}: step {step:.2f}x (<= 1.2), "
                      f"memory {memory:.2f}x (<= 1.3): {verdict}")
PY
else
  echo "no time left for the cost table"
fi
echo "gpu_check done in $(( $(date +%s) - START )) s; outputs in $OUT"
