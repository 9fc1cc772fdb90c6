"""Fine-tune a cross-encoder reranker on a collection's train split; measure it behind a first stage.

The recipe, as a library (``scripts/train_reranker.py`` is the command line, :func:`run_training`
what it runs):

1. :func:`load_groups` (:mod:`training.data`) reads training groups: a BEIR-layout collection's
   train split (judged positives, hard negatives mined by the pipeline's own first stage,
   :mod:`training.first_stage`), optional (title -> text) pseudo-queries, or JSONL groups. A dev
   split of train queries is held back to pick the checkpoint; no test split is ever read here.
2. :func:`train_reranker` (:mod:`training.trainer`) trains with sentence-transformers'
   ``CrossEncoderTrainer`` (group-wise or BCE loss), resumably, keeping the best dev checkpoint.
3. :func:`save_compact` writes fp16 safetensors, :func:`write_model_card` (:mod:`training.card`)
   the card.
4. :func:`measure_reranking` (:mod:`training.measure`) reranks a first stage's top-k through the
   pipeline's reranker stage and scores nDCG@10 with evaluation's collection reader, ranx metrics
   and pair-score cache. ``weight`` is the cross-encoder's share everywhere (1 = reranker alone),
   as in the stage's config and :func:`pipeline.scoring.mix_scores`.

Example:
    >>> groups = load_groups("../shared/data/scifact", "train", config, cache_dir=Path("runs/cache"))
    >>> report = train_reranker(groups.train, groups.dev, TrainSettings(base="bundled:all-MiniLM-L6-v2",
    ...                         out=Path("models/my-reranker")))
"""

from training.card import write_model_card
from training.data import DevQuery, TrainingData, TrainingGroup, dev_query_ids, document_text, load_groups
from training.first_stage import FirstStage
from training.measure import PairScores, dev_ndcg, measure_reranking, reranker_stage
from training.run import FIRST_STAGES, TrainJob, TrainOutcome, check_job, run_training
from training.trainer import GroupwiseLoss, LossName, TrainReport, TrainSettings, save_compact, train_reranker

__all__ = [
    "FIRST_STAGES", "DevQuery", "FirstStage", "GroupwiseLoss", "LossName", "PairScores", "TrainJob", "TrainOutcome",
    "TrainReport", "TrainSettings", "TrainingData", "TrainingGroup", "check_job", "dev_ndcg", "dev_query_ids",
    "document_text", "load_groups", "measure_reranking", "reranker_stage", "run_training", "save_compact",
    "train_reranker", "write_model_card",
]
