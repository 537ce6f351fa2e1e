"""Random-weight models of the real shapes (timing only): MiniLM-L6 (sentence-transformer files) and a
roberta-base-shaped masked LM (12 x 768; the same 14.17M query/value parameters as roberta-base)."""

import shutil

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertForMaskedLM

src = ".gpu/minilm"
shutil.copytree(src, "/tmp/minilm", dirs_exist_ok=True)
torch.manual_seed(0)
AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained("/tmp/minilm")
base = BertConfig(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
)
BertForMaskedLM(base).save_pretrained("/tmp/base-mlm")
AutoTokenizer.from_pretrained(src).save_pretrained("/tmp/base-mlm")
print("models built")
