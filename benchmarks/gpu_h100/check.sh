#!/usr/bin/env bash
# Regression check of this session's engine/collect changes on the GPU machine (torch 2.11): the GPU
# tests, the engine tests and the gloo data-parallel tests (2 CPU processes).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD:$PWD/.gpu/stub:/tmp/site SPECTRAL_DATA=$PWD/.gpu HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 .gpu/build_models.py 2>&1 | tail -1
python3 -c "import torch, transformers, opacus; print(torch.__version__, transformers.__version__, opacus.__version__, torch.cuda.get_device_name())" | tee $OUT/check.txt
timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_engine.py tests/test_collect_distributed.py 2>&1 | tail -8 | tee -a $OUT/check.txt
