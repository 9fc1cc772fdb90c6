"""Shared fixtures: tiny randomly initialised models of the real models' architectures, and tiny corpora.

``tiny_embedder_dir`` mirrors BAAI/bge-m3 (XLM-RoBERTa, CLS pooling, normalized);
``tiny_reranker_dir`` mirrors BAAI/bge-reranker-v2-m3 (XLM-RoBERTa sequence
classification, one label). Both are saved to disk and loaded through the same
code path as the real models, with no network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

# ranx computes its metrics in numba-compiled functions. Compiling them is a fixed cost of about 1.5 min
# per fresh install on a slow 2-core machine, more than the tests' small evaluations take as plain
# Python (tests/test_evaluation.py and test_retrievers_bm25_hybrid.py on two workers: about 2 min from
# a cold cache, 35 s interpreted; the same values, which test_evaluation.py checks against hand-computed
# ones). So the tests, and the scripts they start, run ranx interpreted; NUMBA_DISABLE_JIT=0 make test
# runs it compiled, as users do.
os.environ.setdefault("NUMBA_DISABLE_JIT", "1")

SHARED_DATA = ROOT.parent / "shared" / "data"

TINY_TEXTS = [
    "Vitamin D deficiency causes bone pain, muscle weakness and fatigue.",
    "Vitamin C deficiency causes scurvy with bleeding gums.",
    "Iron deficiency leads to anemia and pale skin.",
    "Python is a programming language; pip installs packages.",
    "The ball python is a snake from Africa.",
    "维生素D缺乏会导致骨骼疼痛和肌肉无力。",
    "长城是中国古代的军事防御工程。",
]

TINY_DOCS = {
    "vitamin-d.md": (
        "# Vitamin D deficiency\nLow vitamin D causes bone pain, muscle weakness and tiredness. Sunlight helps."
    ),
    "vitamin-c.md": "# Vitamin C deficiency\nScurvy brings bleeding gums, bruises and slow wound healing.",
    "iron.txt": "Iron deficiency anemia makes people tired and pale; red meat and lentils supply iron.",
    "code/python.md": "# Python\nPython is a programming language. Install packages with pip install.",
    "zh/changcheng.md": "# 长城\n长城是中国古代修建的军事防御工程，全长两万多公里。",
}


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = TINY_TEXTS + list(TINY_DOCS.values())
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>"
    )
    tok.train_from_iterator(corpus * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok)
    fast.model_max_length = 128
    return fast


def _tiny_config(vocab_size: int, **extra):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2, **extra,
    )


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory) -> Path:
    """A bge-m3-shaped bi-encoder: XLM-R encoder, CLS pooling, L2 normalization; 32-d."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import XLMRobertaModel

    torch.manual_seed(0)
    hf_dir = tmp_path_factory.mktemp("tiny-xlmr")
    tokenizer = _tiny_tokenizer()
    XLMRobertaModel(_tiny_config(len(tokenizer))).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=128)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    out = tmp_path_factory.mktemp("tiny-bge-m3")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory) -> Path:
    """A bge-reranker-v2-m3-shaped cross-encoder: XLM-R sequence classification with one label."""
    import torch
    from transformers import XLMRobertaForSequenceClassification

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny-bge-reranker")
    tokenizer = _tiny_tokenizer()
    XLMRobertaForSequenceClassification(_tiny_config(len(tokenizer), num_labels=1)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def tiny_corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    for rel, text in TINY_DOCS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def write_config(
    path: Path, embedder_model: str, index_path: Path, reranker_model: str | None = None, **sections
) -> Path:
    """Write a pipeline YAML; ``sections`` update the defaults section by section."""
    config = {
        "embedder": {"type": "sentence-transformers", "model": embedder_model, "device": "cpu", "batch_size": 8},
        "chunking": {"enabled": True, "size": 16, "overlap": 4},
        "index": {"type": "faiss", "path": str(index_path), "factory": "Flat", "device": "cpu"},
        "retriever": {"type": "dense", "top_k": 10},
        "reranker": (
            {"type": "cross-encoder", "model": reranker_model, "top_n": 3, "device": "cpu", "max_length": 128}
            if reranker_model
            else {"enabled": False}
        ),
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture()
def tiny_config(tmp_path, tiny_embedder_dir, tiny_reranker_dir) -> Path:
    """A config wiring the tiny embedder and tiny reranker, index under tmp_path."""
    return write_config(tmp_path / "tiny.yaml", str(tiny_embedder_dir), tmp_path / "index", str(tiny_reranker_dir))


def wait_until_ready(proc, base: str, timeout: float, poll: float = 0.1) -> None:
    """Wait for a server subprocess at ``base`` to answer ``/readyz`` with 200; fail if it exits or times out."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "server did not become ready"
        time.sleep(poll)


@pytest.fixture()
def one_torch_thread():
    """One torch thread: on a busy 2-core machine, two threads spin-wait and run tiny models ~7x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
