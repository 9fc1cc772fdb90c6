"""One training job end to end: data, training (or a saved model), measuring, report and model card.

What ``scripts/train_reranker.py`` (:mod:`commands.train`) runs; the command only parses arguments
into a :class:`TrainJob` and prints the :class:`TrainOutcome`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.errors import InputError
from training.card import write_model_card
from training.data import TrainingData, dev_query_ids, load_groups, source_licence
from training.measure import PairScores, measure_reranking, reranker_stage, weight_key
from training.trainer import TrainReport, TrainSettings, save_compact, train_reranker

logger = logging.getLogger(__name__)

FIRST_STAGES = {
    "dense": {"type": "dense", "top_k": 50},
    "bm25": {"type": "bm25", "top_k": 50},
    "hybrid": {"type": "hybrid", "top_k": 50},
}
REPORT_FILE = "training_report.json"
WEIGHT_MEANING = "the cross-encoder's share (1 = the reranker alone, 0 = the first stage's order)"


@dataclass
class TrainJob:
    """Everything one run needs: where the data is, how to train, and what to measure after."""

    data: Sequence[Path]
    config: PipelineConfig
    settings: TrainSettings
    command: str
    split: str = "train"
    cache_dir: Path = Path("runs/cache")
    negatives: int = 7
    mine_top_k: int = 30
    dev_queries: int = 100
    dev_top_k: int = 20
    pseudo_queries: int = 0
    max_queries: int | None = None
    eval_data: Sequence[Path] = ()
    eval_split: str = "test"
    eval_first_stages: Sequence[str] = ("dense",)
    eval_top_k: int = 50
    eval_max_queries: int | None = None
    eval_weights: Sequence[float] = (1.0,)  # the cross-encoder's shares to measure
    eval_dev: bool = False
    skip_training: bool = False
    progress: bool = False


@dataclass
class TrainOutcome:
    """What a job did: its training report (None when only measuring), measurements and saved size."""

    report: TrainReport | None
    measurements: list[dict[str, Any]] = field(default_factory=list)
    size_bytes: int = 0
    groups: int = 0
    dev_queries: int = 0
    pairs_scored: int = 0
    scoring_seconds: float = 0.0


def check_job(split: str, first_stages: Sequence[str], weights: Sequence[float] = ()) -> None:
    """Refuse a test split for training, unknown first stages and weights outside 0..1.

    Raises:
        InputError: with the offending value and the fix.
    """
    if split == "test":
        raise InputError("--split test: training on a test split is not allowed; use train (or a dev split)")
    unknown = [s for s in first_stages if s not in FIRST_STAGES]
    if unknown:
        raise InputError(f"--eval-first-stages: unknown {unknown[0]!r}; choose from {', '.join(FIRST_STAGES)}")
    outside = [w for w in weights if not 0.0 <= w <= 1.0]
    if outside:
        raise InputError(f"--eval-weights: {outside[0]:g} is not a cross-encoder share between 0 and 1")


def run_training(job: TrainJob) -> TrainOutcome:
    """Train (or load with ``skip_training``) the model in ``job.settings.out``, measure it, write report and card."""
    check_job(job.split, job.eval_first_stages, job.eval_weights)
    out = job.settings.out
    settings, command, earlier = job.settings, job.command, []
    if job.skip_training:
        from sentence_transformers.cross_encoder import CrossEncoder

        from pipeline.pair_model import register

        register()

        saved = _read_report(out / REPORT_FILE)
        report = TrainReport(**saved["report"]) if saved.get("report") else None
        sources = saved["sources"]
        if saved.get("settings"):  # the card describes the run as trained, not this command's defaults
            work_dir = saved["settings"].get("work_dir")
            work_dir = Path(work_dir) if work_dir else None
            settings = TrainSettings(**{**saved["settings"], "out": out, "work_dir": work_dir})
        command = saved.get("command") or command
        earlier = saved.get("measurements", [])
        device = "cpu" if job.settings.device == "auto" else job.settings.device
        model = CrossEncoder(str(out), max_length=job.settings.max_length, device=device)
        model.model.float()
        outcome = TrainOutcome(report)
    else:
        data = TrainingData()
        for folder in job.data:
            data.extend(load_groups(
                folder, job.split, job.config, cache_dir=job.cache_dir, num_negatives=job.negatives,
                mine_top_k=job.mine_top_k, dev_queries=job.dev_queries if not data.dev else 0,
                dev_top_k=job.dev_top_k, pseudo_queries=job.pseudo_queries, max_queries=job.max_queries,
                seed=job.settings.seed,
            ))
        logger.info("training groups: %d; dev queries: %d", len(data.train), len(data.dev))
        if settings.cache_apart:
            from training.cached import train_reranker_cached

            model, report = train_reranker_cached(data.train, data.dev, settings)
        else:
            model, report = train_reranker(data.train, data.dev, settings)
        sources = data.sources
        outcome = TrainOutcome(report, groups=len(data.train), dev_queries=len(data.dev))
    outcome.size_bytes = save_compact(model, out, settings.base, trained_apart=settings.train_apart)
    if job.eval_data or job.eval_dev:
        scorer = PairScores(reranker_stage(model, max_length=job.settings.max_length))
        outcome.measurements = _measure(job, scorer)
        outcome.pairs_scored, outcome.scoring_seconds = scorer.scored, scorer.seconds
    # Measurements of an earlier run stay, unless this run measured the same collection and split.
    fresh = {(m["collection"], m["split"]) for m in outcome.measurements}
    measurements = [m for m in earlier if (m["collection"], m["split"]) not in fresh] + outcome.measurements
    settings_dict = asdict(settings) | {"out": str(settings.out), "work_dir": str(settings.work_dir or "")}
    (out / REPORT_FILE).write_text(json.dumps({
        "report": asdict(report) if report else None, "settings": settings_dict, "command": command,
        "sources": sources, "weight": WEIGHT_MEANING, "measurements": measurements,
    }, indent=2) + "\n", encoding="utf-8")
    licences = {name: text for f in job.data for name, text in _licences(Path(f)).items()}
    write_model_card(out, settings=settings, report=report, sources=sources, measurements=measurements,
                     command=command, size_bytes=outcome.size_bytes, licences=licences)
    return outcome


def _measure(job: TrainJob, scorer: PairScores) -> list[dict[str, Any]]:
    """Measure on the dev queries of the first collection (choosing each first stage's weight) and ``eval_data``."""
    first_stages = {s: {**FIRST_STAGES[s], "top_k": job.eval_top_k} for s in job.eval_first_stages}
    weights = list(job.eval_weights)
    measurements, chosen = [], None
    common = dict(cache_dir=job.cache_dir, first_stages=first_stages, top_k=job.eval_top_k, progress=job.progress)
    if job.eval_dev:
        from evaluation.collection import load_collection

        held = dev_query_ids(load_collection(job.data[0], job.split), job.dev_queries, job.settings.seed)
        dev = measure_reranking(job.data[0], job.split, job.config, scorer, weights=weights, query_ids=held, **common)
        dev["split"] = f"{job.split} (dev queries)"
        # Each first stage's weight is the one best on dev (ties: the larger, i.e. more reranker).
        chosen = {name: float(max(r["mixed"].items(), key=lambda kv: (kv[1], float(kv[0])))[0])
                  for name, r in dev["results"].items()}
        dev["chosen_weights"] = chosen
        measurements.append(dev)
    for folder in job.eval_data:
        m = measure_reranking(folder, job.eval_split, job.config, scorer, max_queries=job.eval_max_queries,
                              weights=weights + list((chosen or {}).values()), seed=job.settings.seed, **common)
        if chosen:
            m["chosen_weights"] = chosen
        measurements.append(m)
    return measurements


def _read_report(path: Path) -> dict[str, Any]:
    """A saved ``training_report.json``; one written before weights were the cross-encoder's share is converted."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    if "weight" not in saved:  # "interpolated" was keyed by the first stage's weight w_first = 1 - weight
        for m in saved.get("measurements", []):
            for r in m["results"].values():
                r["mixed"] = {weight_key(1.0 - float(w)): v for w, v in r.pop("interpolated", {}).items()}
            if m.get("chosen_weights"):
                m["chosen_weights"] = {k: round(1.0 - w, 6) for k, w in m["chosen_weights"].items()}
    return saved


def _licences(folder: Path) -> dict[str, str]:
    """Licence per source: a JSONL folder made by make_training_data.py lists its sources in SOURCES.json."""
    listed = folder / "SOURCES.json"
    if listed.is_file():
        return {f"{folder.name}/{src['source']}": src.get("licence", "unknown")
                for src in json.loads(listed.read_text(encoding="utf-8"))}
    return {folder.name: source_licence(folder)}
