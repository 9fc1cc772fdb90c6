"""The base of every stage's ``Params`` model (kept apart from the config loader, which imports the stages)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class StageParams(BaseModel):
    """Base of every stage's ``Params``: unknown keys are errors, values are immutable.

    Keys that hold file system paths are named in ``path_keys`` (always a path) and
    ``model_keys`` (a folder, or a hub id such as ``BAAI/bge-m3`` when no such folder
    exists). A relative path written in a config file is taken relative to that file's
    folder; see :func:`pipeline.config.load_config`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    path_keys: ClassVar[tuple[str, ...]] = ()
    model_keys: ClassVar[tuple[str, ...]] = ()


class RerankerParams(StageParams):
    """Base of every reranker's ``Params``: how its scores become a ranking (:func:`pipeline.scoring.rank_hits`).

    ``top_n`` hits are kept; ``weight`` is the reranker's share of the final score (the rest is the
    first stage's, min-max scaled); ``mix`` says how the reranker's score enters that mix:
    ``"score"`` as it is (a calibrated 0..1 probability: an unsure model barely moves the first
    stage's order), ``"minmax"`` stretched over 0..1 per query like the first stage's
    (:func:`pipeline.scoring.mix_scores`). A config's own values apply even when several configs
    share one loaded model.
    """

    top_n: PositiveInt = 5
    weight: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    mix: Literal["score", "minmax"] = "score"
    # score only the first stage's best `depth` candidates (None: all of them); the others keep their
    # places after them. A slower, better model as a second pass on the best few (docs/reranker.md)
    depth: PositiveInt | None = None
    # read a chunk with its document's title and heading path in front where it does not begin with them
    # (pipeline.scoring.passage_with_title): a chunk from the middle of a page says what it is about
    title: bool = False
