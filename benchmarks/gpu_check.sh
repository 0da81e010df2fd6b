#!/usr/bin/env bash
# GPU check (< 10 minutes): a short CIFAR-shaped sweep with one GPU per trial, then a DDP
# trial (2 workers x 1 GPU when 2+ GPUs, else 1 worker x 1 GPU through the same TorchTrainer
# path), then training step time and peak GPU memory from benchmarks/train_cost.py.
# Data: scikit-learn's digits upscaled to 32x32 (trial.data.image_size: 32), the offline
# real dataset; 1 channel, so "CIFAR-shaped" means 32x32 inputs through the CIFAR hosts.
# Not yet run on a GPU machine.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-$(mktemp -d /tmp/repnas-gpu-check.XXXX)}"
mkdir -p "$OUT"
python -c "import ray, optuna, mlflow, torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print('GPUs:', torch.cuda.device_count(), torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
WORKERS=$(( NGPU >= 2 ? 2 : 1 ))
[ "$WORKERS" = 1 ] && echo "note: 1 GPU only: the DDP trial runs 1 worker (TorchTrainer path, no gradient exchange)"

cat > "$OUT/gpu_sweep.yaml" <<YAML
name: gpu-check
storage_path: $OUT/ray_results
resources: {cpus: 2, gpus: 1}
search: {algorithm: random, num_samples: 1}
mlflow: {tracking_uri: "sqlite:///$OUT/mlflow.db", register: none}
space: {search.budget: {grid: [0.25, 0.5]}}
trial:
  model: {name: repvgg_a0, options: {width_multiplier: 0.5}}
  data: {dataset: digits, image_size: 32, batch_size: 128, num_workers: 2}
  search: {epochs: 4, random_epochs: 1, search_epochs: 2}
  runtime: {device: cuda}
  export: {formats: [state_dict, torch_export], latency_min_run_time: 0.2}
YAML
export PYTHONUNBUFFERED=1
timeout 240 python -m orchestrator.run "$OUT/gpu_sweep.yaml" | tail -n 25
timeout 240 python -m orchestrator.run "$OUT/gpu_sweep.yaml" --set name=gpu-check-ddp \
  --set resources.workers="$WORKERS" --set "space.search.budget={grid: [0.34]}" | tail -n 25
timeout 90 python benchmarks/train_cost.py --device cuda --models repvgg_a0 --batch-size 128 --steps 10 \
  --json "$OUT/train_cost.json" | tail -n 12

python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
train_samples = round(1797 * 0.8)
print(f"\n{'sweep':<16}{'trial':<30}{'epoch s (last)':>15}{'samples/s':>11}{'val_acc':>9}{'node':>10}")
for sweep in ("gpu-check", "gpu-check-ddp"):
    for result in sorted((out / "ray_results" / sweep).glob("repnas_trial_*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        last = rows[-1]
        t = last.get("epoch_time_s", float("nan"))
        print(f"{sweep:<16}{result.parent.name:<30}{t:>15.2f}{train_samples / t:>11.0f}"
              f"{last.get('val_acc', float('nan')):>9.3f}{str(last.get('node_id', '?'))[:8]:>10}")
PY
echo "outputs in $OUT"
