"""Request bodies of the API (validated by FastAPI; a bad body is a 422 naming the field).

Types are strict: ``"5"`` is not an integer and ``1`` is not a string. The
Cohere- and TEI-shaped bodies honour the fields of those APIs that change an
answer (``max_tokens_per_doc``; ``truncate``, ``truncation_direction``,
``raw_scores``, ``return_text``) and accept (and ignore) the others, so their
clients work unmodified.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


class AskRequest(BaseModel):
    """``POST /v1/ask``: retrieve ``top_k``, rerank to ``top_n`` (defaults: the config's)."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr = Field(description="the question")
    top_k: StrictInt | None = Field(None, gt=0, description="candidates to retrieve (default: retriever.top_k)")
    top_n: StrictInt | None = Field(None, gt=0, description="hits the reranker keeps (default: reranker.top_n)")
    reranker: StrictBool = Field(True, description="false skips the configured reranker for this request")
    weight: StrictFloat | None = Field(None, ge=0.0, le=1.0, description="the reranker's share of the final score")
    filter: dict[str, Any] | list[Any] | None = Field(
        None, description="search only matching chunks: {\"source\": \"manuals/*.pdf\", \"lang\": [\"zh\", \"en\"]} "
        "(source/doc_id are globs, page a number, other keys match document metadata) or [\"KEY=VALUE\", ...]")
    config: StrictStr | None = Field(None, description="name of the config to answer with (default: the first)")
    collection: StrictStr | None = Field(
        None, description="the collection (knowledge base) to search (default: the config's own index)")
    answer: StrictBool | None = Field(
        None, description="answer from the top_n passages with the config's generator (default: when it has one)")
    explain: StrictBool = Field(False, description="add 'explain': per candidate, why it is where it is")


class ChatMessage(BaseModel):
    """One message of an OpenAI chat request; ``content`` as a string or a list of text parts."""

    model_config = ConfigDict(extra="ignore")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(str(part.get("text", "")) for part in self.content if part.get("type", "text") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions`` in OpenAI's shape: the last user message is the question.

    ``model`` picks a served config by name when it matches one (else the default config). The
    sampling fields of OpenAI's API are accepted and ignored: the config's generator settings apply.
    """

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    collection: StrictStr | None = Field(None, description="the collection to answer from (default: the config index)")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    top_k: StrictInt | None = Field(None, gt=0)
    top_n: StrictInt | None = Field(None, gt=0)
    max_tokens: StrictInt | None = Field(None, gt=0, description="the answer's token limit, capped by the config's")
    max_completion_tokens: StrictInt | None = Field(None, gt=0, description="OpenAI's newer name for max_tokens")

    @property
    def answer_tokens(self) -> int | None:
        """The smaller of ``max_tokens`` and ``max_completion_tokens`` given (None: the config's limit)."""
        given = [n for n in (self.max_tokens, self.max_completion_tokens) if n is not None]
        return min(given) if given else None


class SearchRequest(BaseModel):
    """``POST /v1/search``: the first stage only."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    top_k: StrictInt | None = Field(None, gt=0)
    filter: dict[str, Any] | list[Any] | None = Field(None, description="as in /v1/ask")
    config: StrictStr | None = None
    collection: StrictStr | None = Field(None, description="as in /v1/ask")
    explain: StrictBool = Field(False, description="add 'explain': per candidate, its first-stage place and score")


class TextDocument(BaseModel):
    """A document given as an object; only ``text`` is read."""

    model_config = ConfigDict(extra="allow")

    text: StrictStr


class CohereRerankRequest(BaseModel):
    """``POST /v1/rerank`` and ``/v2/rerank`` in Cohere's shape.

    ``model`` picks a served config by name when it matches one; any other value
    (``rerank-v3.5``) means the default config with a reranker.
    """

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    collection: StrictStr | None = Field(
        None, description="rerank with that collection's config (when model names no config); needs read on it")
    query: StrictStr
    documents: list[StrictStr | TextDocument]
    top_n: StrictInt | None = Field(None, gt=0)
    return_documents: StrictBool | None = None
    max_tokens_per_doc: StrictInt | None = Field(
        None, gt=0, description="tokens of each document read (default server.max_tokens_per_doc, 4096); a "
        "document longer than the model's window is scored by overlapping windows, and gets its best window's score")


class TeiRerankRequest(BaseModel):
    """``POST /rerank`` in Text Embeddings Inference's shape."""

    model_config = ConfigDict(extra="ignore")

    query: StrictStr
    texts: list[StrictStr]
    collection: StrictStr | None = Field(None, description="rerank with that collection's config; needs read on it")
    return_text: StrictBool = False
    raw_scores: StrictBool = Field(False, description="the model's raw logit instead of the 0..1 score")
    truncate: StrictBool | None = Field(
        None, description="true: cut a text longer than the model's window; false: refuse it (413); "
        "omitted: score it by overlapping windows, keeping the best")
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        "Right", description="which end truncate cuts: Right keeps the beginning, Left the end")
