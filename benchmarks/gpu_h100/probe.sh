#!/usr/bin/env bash
# Hyperparameter probe for the CPU-faithful config: the REAL all-MiniLM-L6-v2 weights carried as float16
# (widened back to float32 here), 1000 DP steps per setting on the GPU. Not the reported runs: the
# config chosen here is then run on the CPU.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD:$PWD/.gpu/stub:/tmp/site SPECTRAL_DATA=$PWD/.gpu HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 - <<'PY'
import shutil, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(".gpu/minilm_fp16"), Path("/tmp/minilm")
shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.fp16.safetensors"))
save_file({k: v.float() for k, v in load_file(src / "model.fp16.safetensors").items()}, dst / "model.safetensors")
PY
run() {  # name, extra args
  name=$1; shift
  timeout 100 python3 -m spectral.collect /tmp/p/$name --config experiments/collect_cpu.toml --dtype bfloat16 --eval-every 250 --checkpoint-every 250 --device cuda --no-progress "$@" > /tmp/p_$name.log 2>&1
  python3 -c "
import spectral.store as s; st=s.open('/tmp/p/$name'); e=st.table('eval'); print('$name', ' '.join(f'{a:.3f}' for a in e.accuracy), 'sigma', round(st.manifest['dp']['noise_multiplier'],3), 's/step', round(st.steps.seconds.median(),3))" 2>&1 | tail -1 | tee -a $OUT/probe.txt
}
run base_lr5e-4
run lr2e-4 --lr 2e-4
run lr1e-3 --lr 1e-3
run b256 --batch-size 256 --physical-batch-size 256


