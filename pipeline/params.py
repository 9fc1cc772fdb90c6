"""The base of every stage's ``Params`` model (kept apart from the config loader, which imports the stages)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StageParams(BaseModel):
    """Base of every stage's ``Params``: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
