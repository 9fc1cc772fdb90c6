"""The base of every stage's ``Params`` model (kept apart from the config loader, which imports the stages)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


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
