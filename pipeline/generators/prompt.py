"""The answer prompt: numbered passages, the question, and a token budget that never overflows.

The prompt numbers the reranked passages ``[1]..[n]`` with their sources and asks
for an answer grounded in them, citing ``[n]``, in the language of the question.
Every generator shares the settings below (its ``Params`` derive from
:class:`GeneratorParams`); the three templates can be overridden in the YAML.

The budget: ``context_window`` (the model's, or the one configured) must hold the
rendered prompt plus ``max_tokens`` for the answer. Passages are added in rank order
while they fit; the first that does not is cut to the tokens left (when at least
``min_passage_tokens`` are), and the rest are left out. ``trimmed`` reports how many
passages were cut or left out, and a prompt that cannot fit even without passages is a
:class:`~pipeline.errors.ConfigError`: nothing overflows silently.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from pydantic import Field, PositiveInt, field_validator

from pipeline.errors import ConfigError
from pipeline.params import StageParams
from pipeline.types import Hit

logger = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages you are given. After each sentence, cite the "
    "passages that support it by their numbers in square brackets, like [1] or [2][3]. If the passages do not "
    "contain the answer, say that you do not know. Answer in the same language as the question."
)
DEFAULT_PROMPT = "{passages}\n\nQuestion: {question}\nAnswer briefly, citing passages as [n]:"
DEFAULT_PASSAGE_TEMPLATE = "[{number}] ({source}) {text}"

PROMPT_FIELDS = {"question", "passages", "n"}
PASSAGE_FIELDS = {"number", "source", "title", "text"}


def _fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc}); write literal braces as {{{{ and }}}}") from None


def _check_template(template: str, allowed: set[str], required: set[str]) -> str:
    found = _fields(template)
    unknown = sorted(found - allowed)
    if unknown:
        allowed_list = ", ".join("{" + name + "}" for name in sorted(allowed))
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; allowed: {allowed_list}")
    missing = sorted(required - found)
    if missing:
        raise ValueError(f"the template must contain {{{missing[0]}}}")
    return template


class GeneratorParams(StageParams):
    """Settings every generator shares: length, sampling, prompt templates, budget, attribution.

    ``temperature: 0`` is greedy decoding (repeatable). ``context_window: null`` takes the
    model's own window where the generator can read it. ``attribution`` checks each answer
    sentence against the passages with the pipeline's embedder: a sentence the model did not
    cite (or cited with a passage below ``attribution_threshold`` cosine) is attributed to its
    most similar passage when that one reaches the threshold.
    """

    max_tokens: PositiveInt = 256
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    context_window: PositiveInt | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    prompt: str = DEFAULT_PROMPT
    passage_template: str = DEFAULT_PASSAGE_TEMPLATE
    min_passage_tokens: PositiveInt = 32
    attribution: bool = True
    attribution_threshold: float = Field(0.5, ge=-1.0, le=1.0)

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str) -> str:
        return _check_template(value, PROMPT_FIELDS, {"question", "passages"})

    @field_validator("system_prompt")
    @classmethod
    def _check_system(cls, value: str) -> str:
        return _check_template(value, PROMPT_FIELDS, set())

    @field_validator("passage_template")
    @classmethod
    def _check_passage(cls, value: str) -> str:
        return _check_template(value, PASSAGE_FIELDS, {"number", "text"})


@dataclass(frozen=True, slots=True)
class Prompt:
    """A rendered prompt: chat messages, the passages numbered in it, and what the budget did."""

    messages: list[dict[str, str]]
    passages: tuple[Hit, ...]
    prompt_tokens: int
    trimmed: int


def build_prompt(
    params: GeneratorParams,
    query: str,
    hits: Sequence[Hit],
    *,
    count: Callable[[list[dict[str, str]]], int],
    truncate: Callable[[str, int], str],
    window: int,
) -> Prompt:
    """Number ``hits`` into the prompt, as many as fit in ``window`` with ``max_tokens`` left for the answer.

    Args:
        count: tokens of a list of chat messages as the model will read them (the chat template included).
        truncate: ``text`` cut to at most that many tokens.
        window: the model's context window in tokens.

    Raises:
        ConfigError: the question and template alone leave no room for ``max_tokens`` and one passage.
    """
    budget = window - params.max_tokens
    base = count(_messages(params, query, []))
    if base + (params.min_passage_tokens if hits else 0) > budget:
        raise ConfigError(
            f"generator: the prompt template and question take {base} tokens and max_tokens is {params.max_tokens}, "
            f"which leaves no room for passages in the model's {window}-token window; lower generator.max_tokens, "
            "shorten the prompt templates or the question, or raise generator.context_window if the model allows"
        )
    kept: list[Hit] = []
    cut_one = False
    for hit in hits:
        candidate = [*kept, hit]
        used = count(_messages(params, query, candidate))
        if used <= budget:
            kept = candidate
            continue
        room = budget - count(_messages(params, query, [*kept, _with_text(hit, "")]))
        text = hit.text
        while room >= params.min_passage_tokens:
            text = truncate(text, room)
            cut = _with_text(hit, text)
            over = count(_messages(params, query, [*kept, cut])) - budget
            if over <= 0:
                kept.append(cut)
                cut_one = True
                break
            room -= max(over, 1)  # token boundaries shift when re-tokenized: shrink by the overflow and retry
        break
    trimmed = len(hits) - len(kept) + cut_one
    if trimmed:
        logger.warning("generator: %d of %d passages cut or left out to fit the %d-token window (%d for the answer)",
                       trimmed, len(hits), window, params.max_tokens)
    if hits and not kept:
        raise ConfigError(
            f"generator: not one passage fits the model's {window}-token window beside a {base}-token prompt and "
            f"max_tokens {params.max_tokens}; lower generator.max_tokens or generator.min_passage_tokens"
        )
    messages = _messages(params, query, kept)
    return Prompt(messages=messages, passages=tuple(kept), prompt_tokens=count(messages), trimmed=trimmed)


def format_passages(params: GeneratorParams, hits: Sequence[Hit]) -> str:
    """The passages block: each hit through ``passage_template``, numbered from 1, one per paragraph."""
    return "\n\n".join(
        params.passage_template.format(
            number=i, source=hit.source, title=hit.title, text=" ".join(hit.text.split())
        )
        for i, hit in enumerate(hits, start=1)
    )


def _messages(params: GeneratorParams, query: str, hits: Sequence[Hit]) -> list[dict[str, str]]:
    values = {"question": query, "passages": format_passages(params, hits), "n": len(hits)}
    messages = []
    if params.system_prompt:
        messages.append({"role": "system", "content": params.system_prompt.format(**values)})
    messages.append({"role": "user", "content": params.prompt.format(**values)})
    return messages


def _with_text(hit: Hit, text: str) -> Hit:
    return replace(hit, text=text)
