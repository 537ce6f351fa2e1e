#!/usr/bin/env bash
# Probe: the CPU-faithful config with lr 1e-3, seeds 0/1/2 side by side on the GPU (real MiniLM weights
# carried as float16, widened to float32). Not the reported runs: those run on the CPU.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD:$PWD/.gpu/stub:/tmp/site SPECTRAL_DATA=$PWD/.gpu HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(".gpu/minilm_fp16"), Path("/tmp/minilm")
shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.fp16.safetensors"))
save_file({k: v.float() for k, v in load_file(src / "model.fp16.safetensors").items()}, dst / "model.safetensors")
PY
for s in 0 1 2; do
  timeout 300 python3 -m spectral.collect /tmp/p/s$s --config experiments/collect_cpu.toml --seed $s --lr 1e-3 --dtype bfloat16 --eval-every 250 --checkpoint-every 500 --device cuda --no-progress > $OUT/s$s.log 2>&1 &
done
wait
for s in 0 1 2; do
python3 -c "
import spectral.store as s; st=s.open('/tmp/p/s$s'); e=st.table('eval'); print('lr1e-3 seed $s', ' '.join(f'{a:.3f}' for a in e.accuracy), 'steps', st.n_steps, 's/step', round(st.steps.seconds.median(),3))" 2>&1 | tail -1 | tee -a $OUT/seeds.txt
done
