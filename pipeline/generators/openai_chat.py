"""Any OpenAI-compatible chat endpoint (``generator.type: openai``): vLLM, Ollama, llama.cpp's server, OpenAI.

The official ``openai`` client streams the chat completion. ``base_url`` is the API root
(``http://localhost:8000/v1`` for vLLM, ``http://localhost:11434/v1`` for Ollama,
``http://localhost:8080/v1`` for llama.cpp's ``llama-server``, ``https://api.openai.com/v1``);
the key is read from the environment variable named by ``api_key_env`` (local servers accept
any key). The endpoint's tokenizer is not known here, so tokens are estimated at one per
three bytes of UTF-8 (generous for English, about right for Chinese) against
``context_window``: set it to the served model's window (vLLM's ``--max-model-len``,
Ollama's ``num_ctx``, llama-server's ``--ctx-size``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from typing import Any

from pydantic import Field, PositiveInt

from pipeline.errors import GeneratorError, MissingDependencyError
from pipeline.generators.base import ChatGenerator
from pipeline.generators.prompt import GeneratorParams

logger = logging.getLogger(__name__)

BYTES_PER_TOKEN = 3
MESSAGE_OVERHEAD = 8  # role markers and separators of a chat template, per message


class OpenAIGenerator(ChatGenerator):
    """Answers through an OpenAI-compatible ``/chat/completions`` endpoint, streamed.

    Errors are one line naming the URL and what to do (:class:`~pipeline.errors.GeneratorError`):
    no answer, a rejected key, a timeout, an unknown model.

    Example (YAML)::

        generator:
          type: openai
          base_url: http://localhost:11434/v1   # Ollama
          model: qwen2.5:7b-instruct
          context_window: 8192
    """

    type_name = "openai"

    class Params(GeneratorParams):
        base_url: str = "http://127.0.0.1:8000/v1"
        model: str
        api_key_env: str = "OPENAI_API_KEY"
        timeout: float = Field(60.0, gt=0.0, description="seconds for one request, connecting included")
        max_retries: int = Field(2, ge=0, le=10)
        context_window: PositiveInt | None = 8192

    def __init__(self, params: Params, *, embedder: Any | None = None) -> None:
        super().__init__(params, embedder=embedder)
        self._client = None

    def load(self) -> OpenAIGenerator:
        """Make the client (no request is sent: an endpoint that is down fails at the first answer)."""
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise MissingDependencyError("openai", "generate", "generator type 'openai'") from None
            self._client = openai.OpenAI(
                base_url=self.params.base_url,
                api_key=os.environ.get(self.params.api_key_env) or "not-needed",
                timeout=self.params.timeout,
                max_retries=self.params.max_retries,
            )
        return self

    def window(self) -> int:
        return self.params.context_window or 8192

    def count_text(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN)

    def count_messages(self, messages: list[dict[str, str]]) -> int:
        return sum(self.count_text(m["content"]) + MESSAGE_OVERHEAD for m in messages) + MESSAGE_OVERHEAD

    def truncate(self, text: str, tokens: int) -> str:
        return text.encode("utf-8")[: tokens * BYTES_PER_TOKEN].decode("utf-8", errors="ignore")

    def chat(self, messages: list[dict[str, str]], usage: dict[str, Any], max_tokens: int) -> Iterator[str]:
        import openai

        self.load()
        try:
            stream = self._client.chat.completions.create(
                model=self.params.model,
                messages=messages,
                temperature=self.params.temperature,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.usage is not None:
                    usage.update(prompt_tokens=chunk.usage.prompt_tokens,
                                 completion_tokens=chunk.usage.completion_tokens)
                for choice in chunk.choices or []:
                    if choice.finish_reason:
                        usage["finish_reason"] = choice.finish_reason
                    if choice.delta is not None and choice.delta.content:
                        yield choice.delta.content
        except openai.OpenAIError as exc:
            raise self._explain(exc) from exc

    def _explain(self, exc: Exception) -> GeneratorError:
        """One line: which URL, what happened, what to do."""
        import openai

        url, env = self.params.base_url, self.params.api_key_env
        if isinstance(exc, openai.APITimeoutError):
            why = (f"did not answer within {self.params.timeout:g} s (after {self.params.max_retries} retries); "
                   "check the server's load, or raise generator.timeout")
        elif isinstance(exc, openai.APIConnectionError):
            why = ("does not answer (connection failed); start the LLM server there or fix generator.base_url "
                   "(vLLM: http://HOST:8000/v1, Ollama: http://HOST:11434/v1, llama.cpp: http://HOST:8080/v1)")
        elif isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            state = "is set but was refused" if os.environ.get(env) else "is not set"
            why = f"rejected the API key ({exc.status_code}); the key comes from ${env}, which {state}"
        elif isinstance(exc, openai.NotFoundError):
            why = (f"answered 404 for model {self.params.model!r} (or no chat route under this base_url); "
                   "check generator.model against the server's /models list and that base_url ends in /v1")
        elif isinstance(exc, openai.APIStatusError):
            message = " ".join(str(getattr(exc, "message", exc)).split())[:300]
            why = f"answered {exc.status_code}: {message}"
        else:
            why = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return GeneratorError(f"generator endpoint {url} {why}")
