"""``python -m spectral.collect``: DP fine-tuning that stores every step's gradient.

Examples
--------
  python -m spectral.collect --out runs/demo
  python -m spectral.collect --config experiments/collect_quick.toml --out runs/quick
  python -m spectral.collect --out runs/demo --resume            # after a crash or Ctrl-C
  python -m spectral.collect --model roberta-base --params attention-qv --batch-size 1000 \\
      --steps 4000 --out runs/paper                               # the paper's setting, online + GPU
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import fields
from pathlib import Path

from ..errors import SpectralError, cli_entry
from . import config as C
from .config import CollectConfig
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
    "clipping": "ghost (memory-lean, default) or per-sample",
    "sampling": "poisson (default; subsampled-Gaussian accounting) or shuffle (fixed batches; per-epoch accounting)",
    "accountant": "Opacus accountant: rdp or prv",
    "streams": "rows stored per step: clipped (before noise), private (the noised gradient); several allowed",
    "dtype": "storage dtype of rows: float32, float16 or bfloat16",
    "seed": "seed of sampling, noise and head initialisation",
    "eval_every": "evaluate on the dev split every N steps (0: never)",
    "eval_size": "evaluate on the first N dev examples",
    "checkpoint_every": "commit rows and a resumable checkpoint every N steps",
    "shard_mb": "target shard size in MiB",
    "init_from": "a finished run to start from (its trained weights; its privacy spending composes into this "
                 "run's epsilon, so --epsilon is then the total budget)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spectral.collect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="run directory (the trajectory store)")
    parser.add_argument("--config", type=Path, help="TOML file of settings (keys as below, with underscores)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    defaults = CollectConfig()
    group = parser.add_argument_group("run settings (default in brackets)")
    for f in fields(CollectConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        kwargs = dict(default=argparse.SUPPRESS, help=f"{HELP[f.name]} [{default}]")
        if f.name == "streams":
            kwargs.update(nargs="+", choices=C.STREAMS)
        elif f.name == "label_text":
            kwargs.update(nargs="+")
        elif isinstance(default, bool):
            kwargs.update(type=lambda s: s.lower() in ("1", "true", "yes"))
        elif f.name in ("delta", "noise_multiplier", "epsilon", "lr", "max_grad_norm"):
            kwargs.update(type=float)
        elif isinstance(default, int) or f.name in ("train_size", "eval_size"):
            kwargs.update(type=int)
        group.add_argument(flag, **kwargs)
    return parser


def load_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpectralError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpectralError(f"config file {path} is not valid TOML: {exc}") from None


@cli_entry
def main(argv=None):
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    out, config_file = args.pop("out"), args.pop("config", None)
    resume, overwrite, progress = args.pop("resume"), args.pop("overwrite"), not args.pop("no_progress")
    given = {**(load_toml(config_file) if config_file else {}), **args}
    if resume and overwrite:
        raise SpectralError("--resume and --overwrite exclude each other")
    if resume:
        # a resumed run keeps its stored settings; a differing one would silently mix two runs
        from ..store import read_manifest

        stored = read_manifest(out).get("config", {})
        clash = {k: v for k, v in given.items() if stored.get(k) != v}
        if clash:
            raise SpectralError(f"--resume keeps the stored settings; these differ: {clash}")
        cfg = CollectConfig.from_dict(stored)
    else:
        cfg = CollectConfig.from_dict(given).validate()
    collect(cfg, out, resume=resume, overwrite=overwrite, progress=progress)
    print(f"stored in {out}; open with spectral.store.open({str(out)!r})")


if __name__ == "__main__":
    main()
