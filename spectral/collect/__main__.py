"""``python -m spectral.collect``: DP fine-tuning that stores every step's gradient.

Examples
--------
  python -m spectral.collect runs/demo
  python -m spectral.collect runs/cpu --config experiments/collect_cpu.toml   # the CPU-faithful run
  python -m spectral.collect runs/demo --resume                 # after a crash or Ctrl-C
  python -m spectral.collect runs/paper --config experiments/collect_paper.toml  # roberta-base, online + GPU
  torchrun --nproc-per-node 4 -m spectral.collect runs/paper --config experiments/collect_paper.toml  # 4 GPUs
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from .. import cli, configs
from ..dp import config as C
from ..dp.config import CollectConfig
from ..dp.distributed import launched_rank
from ..errors import SpectralError, cli_entry
from .run import collect

HELP = {
    "model": "embedded all-MiniLM-L6-v2 (default), a Hugging Face name, or a local model directory",
    "data": "a directory with train/dev files, a CSV/TSV/JSONL file, or a Hugging Face dataset NAME[:CONFIG]; "
    "default: $SPECTRAL_DATA/sst2, else glue:sst2 downloaded with `datasets`",
    "text_column": "text column of --data (default: sentence/text/content/...)",
    "label_column": "label column of --data (default: label)",
    "train_size": "use only the first N training examples",
    "max_length": "truncate inputs to this many tokens",
    "objective": "prompt (the pretrained masked-LM head's scores of label words at the mask of a template; the "
    "paper's), similarity (cosine similarity to the encoder's embeddings of label prompts; for "
    "sentence encoders), classifier (a fresh linear head), auto (similarity for sentence-transformers "
    "checkpoints such as the default, prompt for masked LMs, classifier otherwise)",
    "label_text": "one text per class: label words for prompt [terrible great], label prompts for similarity "
    "['It was terrible.' 'It was great.']",
    "template": "prompt objective's input, with {sentence} and {mask}",
    "pooling": "classifier objective's sentence representation: mean (over tokens), cls (the model's own head), auto (mean for "
    "sentence-transformers checkpoints such as the default)",
    "params": "trained parameters: " + ", ".join(C.PARAM_SETS) + "; join sets with + (attention-qv+classifier)",
    "lora_rank": "rank of the LoRA adapters (--params lora)",
    "optimizer": "adam (DP-Adam) or sgd (DP-SGD)",
    "lr": "peak learning rate",
    "lr_schedule": "linear (decay to 0, as the paper) or constant",
    "steps": "number of optimizer steps",
    "batch_size": "logical batch: expected size (poisson) or exact size (shuffle)",
    "physical_batch_size": "examples per forward/backward; gradients accumulate up to the logical batch",
    "epsilon": "target epsilon; the noise multiplier is calibrated to spend it over --steps",
    "delta": "target delta (default n_train^-1.1)",
    "noise_multiplier": "use this sigma instead of calibrating to --epsilon (0: clipping only, no privacy)",
    "max_grad_norm": "per-example clipping norm C",
    "clipping": "auto (bookkeeping when every trained layer is linear, else per-sample if the per-example gradients "
    "fit, else ghost; the choice and why are recorded in the manifest), ghost (two backward passes, any layer), "
    "bookkeeping (one backward pass; linear layers: q/v, classifier, lora), per-sample (per-example gradients "
    "in memory)",
    "sampling": "poisson (default; subsampled-Gaussian accounting) or shuffle (fixed batches; per-epoch accounting)",
    "accountant": "Opacus accountant: rdp or prv",
    "streams": "rows stored per step: clipped (before noise), private (the noised gradient), sampling (the batch halves' difference: its sampling noise); several allowed",
    "dtype": "storage dtype of rows: float32, float16 or bfloat16",
    "seed": "seed of sampling, noise and head initialisation",
    "eval_every": "evaluate on the dev split every N steps (0: never)",
    "eval_size": "evaluate on the first N dev examples",
    "checkpoint_every": "commit rows and a resumable checkpoint every N steps",
    "shard_mb": "target shard size in MiB",
    "probe_batches": "increasing batch sizes, e.g. 128,256,512,1000: every step also stores the mean clipped gradient "
    "of the first m examples of one extra random sample of the largest size (streams probe<m>; no noise: a "
    "measurement of private data, not a DP release)",
    "init_from": "a finished run to start from (its trained weights; its privacy spending composes into this "
    "run's epsilon, so --epsilon is then the total budget)",
}


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m spectral.collect", __doc__)
    cli.add_run_dir(p, "run directory (the trajectory store)")
    p.add_argument(
        "--config",
        type=Path,
        help="TOML file of settings (keys as below, with underscores), or a configuration shipped with spectral: "
        "quick, cpu, paper, paper_distilroberta",
    )
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store in RUN_DIR")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="commit and stop after N steps, keeping the full run's schedule and noise (e.g. the first 250 of "
        "1000); --resume continues",
    )
    cli.add_common(p)
    cli.add_config(
        p,
        CollectConfig,
        HELP,
        title="run settings (default in brackets)",
        choices={
            "objective": C.OBJECTIVES,
            "pooling": C.POOLING,
            "optimizer": C.OPTIMIZERS,
            "lr_schedule": C.SCHEDULES,
            "clipping": C.CLIPPING,
            "sampling": C.SAMPLING,
            "accountant": C.ACCOUNTANTS,
            "streams": C.STREAMS,
            "dtype": C.DTYPES,
        },
    )
    return p


def interrupt_on_sigterm() -> None:
    """SIGTERM (torchrun stopping the job when one rank died, a batch scheduler's time limit) ends the
    run like Ctrl-C: at its last commit, with a clear message, instead of killing it mid-write."""

    def handler(signum, frame):
        raise KeyboardInterrupt("by SIGTERM; torchrun sends it to every rank when one fails")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.use_threads(args)
    cli.quiet_library_warnings()
    interrupt_on_sigterm()
    out, resume = args.run_dir, args.resume
    given = {**(configs.read(args.config) if args.config else {}), **cli.config_values(args, CollectConfig)}
    if args.stop_after is not None and args.stop_after < 1:
        raise SpectralError(f"--stop-after must be at least 1, got {args.stop_after}")
    cfg = None if resume else CollectConfig.from_dict(given).validate()  # a resumed run: its stored settings
    collect(
        cfg, out, resume=resume, overwrite=args.overwrite, progress=not args.no_progress, device=args.device,
        requested=given, stop_after=args.stop_after,
    )  # fmt: skip
    if launched_rank() == 0:
        print(f"stored in {out}; open with spectral.store.open({str(out)!r})")


if __name__ == "__main__":
    main()
