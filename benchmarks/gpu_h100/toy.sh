#!/usr/bin/env bash
# Issue 15 item 8: the paper's toy grid widened below T = 10 (T in {1, 2, 5} added), on the GPU.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site
STEPS="1 2 5 10 20 40 80 160 320 640 1280 2560 5120"
{ time python3 -m spectral.toy /tmp/toyrun --device cuda --no-progress --steps $STEPS --no-figure; } > $OUT/toy.log 2>&1
{ time python3 -m spectral.toy /tmp/toyrun --device cuda --no-progress --steps $STEPS --no-figure --seed-code-const --modes const; } >> $OUT/toy.log 2>&1
nvidia-smi -L >> $OUT/toy.log
cp -r /tmp/toyrun/toy $OUT/toy; cp -r /tmp/toyrun/toy-seedcode $OUT/toy-seedcode
tail -5 $OUT/toy.log
