"""What the generator types share: prompt and budget, streaming, timing, citation checks.

A type subclasses :class:`ChatGenerator` and provides the model side only: loading, the
context window, token counting and truncation, and one streaming chat call. The answer
is assembled here, the same way for every type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from pipeline.generators.citations import attribute, clean_citations, split_sentences
from pipeline.generators.prompt import GeneratorParams, Prompt, build_prompt
from pipeline.types import Answer, Hit

logger = logging.getLogger(__name__)


class ChatGenerator:
    """Base of the generator stages (:class:`pipeline.protocols.Generator`).

    ``requires = ("embedder",)``: the pipeline hands in its embedder, used to check and
    attribute citations (it loads only when an answer is attributed). Subclasses implement
    :meth:`load`, :meth:`window`, :meth:`count_messages`, :meth:`count_text`,
    :meth:`truncate` and :meth:`chat`.
    """

    requires = ("embedder",)
    type_name = "?"
    Params = GeneratorParams

    def __init__(self, params: GeneratorParams, *, embedder: Any | None = None) -> None:
        self.params = params
        self.embedder = embedder

    # -- the model side, per type ------------------------------------------------------------
    def load(self) -> ChatGenerator:  # pragma: no cover - every type overrides it
        raise NotImplementedError

    @property
    def model_name(self) -> str:
        return str(getattr(self.params, "model", "?"))

    def window(self) -> int:
        """The context window in tokens: ``params.context_window`` or the model's own."""
        raise NotImplementedError

    def count_messages(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the chat messages as the model reads them (template included)."""
        raise NotImplementedError

    def count_text(self, text: str) -> int:
        """Tokens of a plain text."""
        raise NotImplementedError

    def truncate(self, text: str, tokens: int) -> str:
        """``text`` cut to at most ``tokens`` tokens."""
        raise NotImplementedError

    def chat(self, messages: list[dict[str, str]], usage: dict[str, Any], max_tokens: int) -> Iterator[str]:
        """Stream the reply's text pieces, at most ``max_tokens`` tokens; fill ``usage`` (``prompt_tokens``,
        ``completion_tokens``, ``finish_reason``) with what the model reports, when it reports it."""
        raise NotImplementedError

    # -- the answer, shared ------------------------------------------------------------------
    def prompt(self, query: str, hits: Sequence[Hit], max_tokens: int | None = None) -> Prompt:
        """The rendered prompt for ``query`` over ``hits``, fitted to the window with room for the answer."""
        params = self.params.model_copy(update={"max_tokens": self.answer_tokens(max_tokens)})
        return build_prompt(params, query, hits, count=self.count_messages, truncate=self.truncate,
                            window=self.window())

    def answer_tokens(self, max_tokens: int | None = None) -> int:
        """The answer's token limit: ``max_tokens`` when given, capped by the config's ``max_tokens`` (the budget)."""
        return self.params.max_tokens if max_tokens is None else max(1, min(max_tokens, self.params.max_tokens))

    def generate(self, query: str, hits: Sequence[Hit], max_tokens: int | None = None) -> Answer:
        """Answer ``query`` from ``hits`` (numbered ``[1]..[n]`` in order) with checked citations.

        ``max_tokens`` lowers the answer's length limit for this call; the config's ``max_tokens`` caps it.
        """
        *_, answer = self.stream(query, hits, max_tokens)  # the text pieces, then the Answer
        return answer

    def stream(self, query: str, hits: Sequence[Hit], max_tokens: int | None = None) -> Iterator[str | Answer]:
        """Like :meth:`generate`, but yields the reply's text pieces as they come, then the :class:`Answer`."""
        self.load()
        prompt = self.prompt(query, hits, max_tokens)
        usage: dict[str, Any] = {}
        timings: dict[str, float] = {}
        parts: list[str] = []
        start = time.perf_counter()
        for piece in self.chat(prompt.messages, usage, self.answer_tokens(max_tokens)):
            if not piece:
                continue
            if "first_token" not in timings:
                timings["first_token"] = time.perf_counter() - start
            parts.append(piece)
            yield piece
        timings["generate"] = time.perf_counter() - start
        yield self.finish("".join(parts), prompt, usage, timings)

    def finish(self, raw: str, prompt: Prompt, usage: dict[str, Any], timings: dict[str, float]) -> Answer:
        """Check the citations of a reply and assemble the :class:`Answer`."""
        text, dropped = clean_citations(raw, len(prompt.passages))
        if dropped:
            logger.warning("generator: dropped citations outside 1..%d: %s", len(prompt.passages), list(dropped))
        sentences = split_sentences(text)
        begin = time.perf_counter()
        embedder = self.embedder if self.params.attribution else None
        citations = attribute(sentences, [h.text for h in prompt.passages], embedder, self.params.attribution_threshold)
        timings["attribute"] = time.perf_counter() - begin
        completion = usage.get("completion_tokens")
        return Answer(
            text=text,
            sentences=tuple(sentences),
            citations=citations,
            dropped=dropped,
            passages=prompt.passages,
            generator=self.type_name,
            model=self.model_name,
            prompt_tokens=int(usage.get("prompt_tokens") or prompt.prompt_tokens),
            completion_tokens=int(completion if completion is not None else self.count_text(raw)),
            timings=timings,
            trimmed=prompt.trimmed,
            finish_reason=usage.get("finish_reason"),
        )
