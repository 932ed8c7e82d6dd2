#!/usr/bin/env bash
# The GPU benchmark set of issue 6 on a CUDA machine; results (JSON + markdown) land in OUT_DIR.
#
#   bash benchmarks/gpu_session.sh OUT_DIR [steps...]
#   steps: check window ours reference compile upstream-nano upstream-pro   (default: all)
#
# Needs: satseg importable (the repo root is put on PYTHONPATH), nibabel and isal; for upstream-* a checkout of
# github.com/zhaoziheng/SAT in $SAT_UPSTREAM plus monai, einops, positional_encodings. $SATSEG_BENCH_DATA holds
# totalseg/reference_files/example_ct*.nii.gz and all-mpnet-base-v2/ (tokenizer files are enough: upstream's
# text tower gets a random-weight MPNet written beside them in /tmp).
set -u
out=${1:-benchmarks/results}; shift || true
steps=${*:-check window ours reference compile upstream-nano upstream-pro}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
has() { [[ " $steps " == *" $1 "* ]]; }
table() { grep '^| ' | tail -n "$1"; }

if has check; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.get_device_name())" >> "$out/gpu.txt" 2>&1
  cat "$out/gpu.txt"
  python3 -m pytest -q -p no:cacheprovider tests/test_geometry.py tests/test_windows.py tests/test_model_architecture.py \
    tests/test_fastpath.py -k "cuda or tensor_maps or torch_device or fused or bit_identical or gpu_way" 2>&1 | tail -3
fi
if has window; then  # one window: precision × batch × layout
  python3 benchmarks/forward_window.py --variant nano pro --device cuda --precision fp16 bf16 fp32 --batch 1 2 \
    --repeats 3 --contiguous --json "$out/gpu_window_contiguous.json" 2>&1 | grep '^{' | cut -c1-330
  python3 benchmarks/forward_window.py --variant nano --device cuda --precision fp16 bf16 --batch 1 2 \
    --repeats 3 --json "$out/gpu_window_channels_last.json" 2>&1 | grep '^{' | cut -c1-330
fi
if has ours; then  # the whole pipeline, default settings (auto precision)
  for v in nano pro; do
    python3 benchmarks/run.py --variant $v --case ct_sm ct synthetic --prompts 1 10 100 --device cuda \
      --json "$out/gpu_satseg.json" 2>&1 | table 9
  done
fi
if has reference; then  # against the plain fp32 loop (TF32 off), per precision
  for v in nano pro; do
    for p in fp16 bf16 fp32; do
      python3 benchmarks/run.py --variant $v --case synthetic --prompts 10 --device cuda --precision $p --reference \
        --json "$out/gpu_satseg_reference.json" 2>&1 | table 1
    done
  done
fi
if has compile; then  # torch.compile: the first case pays the compilation
  for v in nano pro; do
    python3 benchmarks/run.py --variant $v --case ct_sm synthetic --prompts 10 --device cuda --compile \
      --json "$out/gpu_satseg_compile.json" 2>&1 | table 2
  done
fi
for v in nano pro; do
  has upstream-$v || continue
  mpnet=/tmp/mpnet-random
  [ -f $mpnet/model.safetensors ] || python3 - "$SATSEG_BENCH_DATA/all-mpnet-base-v2" "$mpnet" <<'EOF'
import shutil, sys, torch
from transformers import AutoConfig, AutoModel
src, dst = sys.argv[1:]
shutil.copytree(src, dst, dirs_exist_ok=True)
torch.manual_seed(0)
AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(dst)
EOF
  for c in ct_sm ct synthetic; do
    python3 benchmarks/upstream_sat.py --upstream "$SAT_UPSTREAM" --mpnet $mpnet --device cuda --variant $v \
      --case $c --prompts 1 10 100 --json "$out/gpu_upstream.json" 2>&1 | grep -E '^\{|Error' | cut -c1-600
  done
done
