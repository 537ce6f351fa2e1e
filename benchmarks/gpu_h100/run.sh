#!/usr/bin/env bash
# One prepared GPU session (issue 16): tests, benchmarks, a paper-shaped collect + analyse. Writes $OUT/*.txt
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD:$PWD/.gpu/stub:/tmp/site SPECTRAL_DATA=$PWD/.gpu HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log() { echo "== $* (t=$(( $(date +%s) - T0 )) s)" | tee -a $OUT/summary.txt; }
{ nvidia-smi -L; python3 -c "import torch, transformers, opacus; print(torch.__version__, transformers.__version__, opacus.__version__)"; } 2>&1 | tee -a $OUT/summary.txt
python3 .gpu/build_models.py 2>&1 | tail -1
log "tests"
timeout 110 python3 -m pytest -q -p no:cacheprovider -x tests/test_device.py tests/test_objectives.py tests/test_engine.py 2>&1 | tail -4 | tee $OUT/tests.txt
log "bench collect (MiniLM-L6 shape, B=1000)"
timeout 100 python3 -m spectral.bench collect --device cuda --params attention-qv --batch-size 1000 --physical-batch-size 500 --warmup 2 --steps 6 2>&1 | grep -v "Loading\|Warn\|warn" | tee $OUT/bench_collect.txt
log "paper-shaped collect (MiniLM-L6 shape, B=1000, 250 steps, similarity objective)"
{ TIMEFORMAT="collect wall %R s"; time timeout 150 python3 -m spectral.collect /tmp/runs/minilm --batch-size 1000 --physical-batch-size 500 --steps 250 --max-length 64 --eval-every 125 --checkpoint-every 50 --device cuda --no-progress > $OUT/collect_minilm.txt 2>&1; } 2>> $OUT/collect_minilm.txt
python3 - >> $OUT/collect_minilm.txt <<'PY'
import spectral.store as s, os
st = s.open("/tmp/runs/minilm"); d = st.steps
print("steps", st.n_steps, "d", st.d, "s/step median", d.seconds.median(), "mean", d.seconds.mean())
size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk("/tmp/runs/minilm/streams") for f in fs)
print("store bytes", size, "MB/s at the median step", size / st.n_steps / d.seconds.median() / 1e6)
print(st.table("eval").to_string())
PY
log "analyse GPU vs CPU on that store"
{ TIMEFORMAT="cuda analyse wall %R s"; time python3 -m spectral.analyse /tmp/runs/minilm --device cuda --no-progress --holdout none --out /tmp/a-gpu; } > $OUT/analyse.txt 2>&1
{ TIMEFORMAT="cpu (16 cores) analyse wall %R s"; time python3 -m spectral.analyse /tmp/runs/minilm --device cpu --no-progress --holdout none --out /tmp/a-cpu; } >> $OUT/analyse.txt 2>&1
python3 -c "
import numpy as np; a=np.load('/tmp/a-gpu/eigenvalues.npy'); b=np.load('/tmp/a-cpu/eigenvalues.npy')
print('max rel eigenvalue difference gpu vs cpu', float(np.max(np.abs(a-b)/b)))" >> $OUT/analyse.txt 2>&1
log "roberta-base-shaped prompt collect (12x768, d=14.17M q/v, B=1000, 20 steps)"
timeout 100 python3 -m spectral.collect /tmp/runs/base --model /tmp/base-mlm --objective prompt --batch-size 1000 --physical-batch-size 250 --steps 20 --max-length 64 --eval-every 0 --checkpoint-every 10 --device cuda --no-progress > $OUT/collect_base.txt 2>&1
python3 -c "
import spectral.store as s; st=s.open('/tmp/runs/base'); d=st.steps
print('base-shaped: d', st.d, 's/step median (steps 5+)', d.seconds.iloc[5:].median())" >> $OUT/collect_base.txt 2>&1
log "bench analyse (n=1000, d=2M, k=100)"
timeout 90 python3 -m spectral.bench analyse --device cuda --n 1000 --d 1000000 --k 100 --methods ours --dir /tmp/bench-analyse 2>&1 | tee $OUT/bench_analyse.txt
log "done"
