"""CPU runtimes for a cross-encoder: OpenVINO and ONNX Runtime, exported once and cached.

:class:`pipeline.rerankers.cross_encoder.CrossEncoderReranker` tokenizes and batches; a runtime here
only turns a padded batch of token ids (numpy int64, ``(batch, tokens)``) into one raw logit per pair.

* ``openvino``: the Hugging Face model converted with OpenVINO's own ``convert_model`` (no optimum);
  ``quantize: int8`` runs NNCF post-training quantization on the calibration pairs stored next to
  the model (``calibration_pairs.jsonl``: SciFact *train* pairs for the shipped model).
* ``onnx``: ``torch.onnx.export`` (TorchScript exporter), then ONNX Runtime; ``quantize: int8`` is
  ONNX Runtime's dynamic int8 (weights per channel), which needs no calibration data.

The export is written once into ``<model folder>/.export/<name>-<digest>/`` where ``<digest>`` covers
the model's weights and config, the backend, ``quantize``, the calibration pairs and the versions
of torch, transformers and the runtime: any change gives a new folder (the old one is left, and can
be deleted). A read-only model folder falls back to ``$XDG_CACHE_HOME/rag-pipeline/rerankers`` (or
``~/.cache/...``). Loading an export needs no network and no torch model. Processes that need the same
missing export at once make it once: a file lock (``.<name>-<digest>.lock`` beside it) makes the
others wait and reuse it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, MissingDependencyError
from pipeline.versions import package_versions

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when the export code changes what it writes
CALIBRATION_PAIRS = "calibration_pairs.jsonl"  # {"query", "passage"} per line, for int8 (OpenVINO)
CALIBRATION_LIMIT = 300  # pairs used by NNCF
# backend -> (python module, pip package, extra that installs it)
RUNTIMES: dict[str, tuple[str, str, str]] = {
    "openvino": ("openvino", "openvino", "fast"),
    "onnx": ("onnxruntime", "onnxruntime", "onnx"),
}
# what quantizing needs beyond the runtime: backend -> (module, package, extra)
QUANTIZERS: dict[str, tuple[str, str, str]] = {
    "openvino": ("nncf", "nncf", "fast"),
    "onnx": ("onnx", "onnx", "onnx"),
}

Runtime = Callable[[dict[str, np.ndarray]], np.ndarray]  # padded features -> float32 logits, (batch,)


def require(backend: str, quantize: str = "none") -> None:
    """Raise :class:`MissingDependencyError` naming the extra when ``backend``'s packages are missing."""
    import importlib.util

    needs = [RUNTIMES[backend]] + ([QUANTIZERS[backend]] if quantize != "none" else [])
    for module, package, extra in needs:
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(package, extra, f"reranker.backend: {backend} (quantize: {quantize})")


def available(backend: str, quantize: str = "none") -> bool:
    """Whether :func:`require` would pass."""
    try:
        require(backend, quantize)
    except MissingDependencyError:
        return False
    return True


INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # CPU instructions for int8 dot products


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def auto_backend(quantize: str, device: str, flags: set[str] | None = None) -> tuple[str, str]:
    """``backend: auto``: the runtime to use here and why, from the CPU's instructions.

    Measured on 2-core EPYCs (docs/reranker.md): with VNNI (int8 dot products) OpenVINO int8 was
    the fastest; on an AVX2-only CPU it was the slowest of five, and torch's dynamic int8 the fastest
    (as fast as ONNX int8), with no export at all. Without int8, torch fp32 needs no export either.
    """
    if device != "cpu":
        return "torch", f"on {device} the torch model runs"
    flags = cpu_flags() if flags is None else flags
    vnni = sorted(set(INT8_DOT_FLAGS) & flags)
    if quantize == "int8" and vnni and available("openvino", quantize):
        return "openvino", f"the CPU has {', '.join(vnni)}: OpenVINO int8 is the fastest measured there"
    if quantize == "int8" and vnni:
        return "torch", f"the CPU has {', '.join(vnni)} but OpenVINO/NNCF are not installed (the 'fast' extra)"
    if quantize == "int8":
        return "torch", "no VNNI/AMX int8 instructions: torch's dynamic int8 is the fastest measured there"
    return "torch", "quantize none: the exact torch model, no export"


def export_key(model_dir: Path, backend: str, quantize: str) -> dict:
    """What an export depends on; its digest names the export folder."""
    files = {}
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "frozen_embeddings.json"):
        path = model_dir / name
        if path.is_file():
            files[name] = _file_digest(path)
    if quantize != "none" and calibration_pairs_path(model_dir).is_file():
        files[CALIBRATION_PAIRS] = _file_digest(calibration_pairs_path(model_dir))
    packages = ["torch", "transformers", RUNTIMES[backend][1]]
    if quantize != "none":
        packages.append(QUANTIZERS[backend][1])
    return {"format": EXPORT_FORMAT, "backend": backend, "quantize": quantize, "files": files,
            "versions": package_versions(packages, runtime=False)}


def export_dir(model_dir: Path, backend: str, quantize: str) -> Path:
    """The cached export for these settings (it may not exist yet): next to the model when writable."""
    key = export_key(model_dir, backend, quantize)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{backend}-{quantize}-{digest}"
    local = model_dir / ".export"
    if _writable(local):
        return local / name
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rag-pipeline" / "rerankers"
    return base / f"{model_dir.name}-{hashlib.sha256(str(model_dir).encode()).hexdigest()[:8]}" / name


def load_runtime(model_dir: Path, backend: str, quantize: str, threads: int,
                 load_torch_model: Callable[[], object], tokenizer) -> tuple[Runtime, Path]:
    """A ready runtime for the model in ``model_dir``, exporting it first when no cached export matches.

    ``load_torch_model`` is called only to export (it returns the Hugging Face model in fp32).
    Returns the runtime and the export folder.
    """
    require(backend, quantize)
    folder = ensure_export(model_dir, backend, quantize, load_torch_model, tokenizer)
    if backend == "openvino":
        return _openvino_runtime(folder, threads), folder
    return _onnx_runtime(folder, threads), folder


def ensure_export(model_dir: Path, backend: str, quantize: str, load_torch_model: Callable[[], object],
                  tokenizer) -> Path:
    """The export folder for these settings, made first when missing: one process makes it, others wait.

    Two processes starting at once on a fresh model (two test workers, a server and ``build_index.py``)
    would otherwise both spend the export's minutes; the file lock makes the second wait for the first
    and then reuse its export.
    """
    from filelock import FileLock

    folder = export_dir(model_dir, backend, quantize)
    if (folder / "export.json").is_file():
        logger.debug("reranker: reusing the %s export in %s", backend, folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        if (folder / "export.json").is_file():  # made by another process while this one waited
            logger.info("reranker: reusing the %s export another process just made in %s", backend, folder)
        else:
            _export(folder, model_dir, backend, quantize, load_torch_model, tokenizer)
    return folder


def _export(folder: Path, model_dir: Path, backend: str, quantize: str, load_torch_model, tokenizer) -> None:
    """Write the export into a temporary sibling folder, then rename it into place (atomic for readers)."""
    import time

    folder.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    logger.info("reranker: exporting %s to %s (%s, quantize %s); done once", model_dir, folder, backend, quantize)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    work.chmod(0o755)  # mkdtemp makes it private; other users of a shared model folder read it too
    try:
        network = load_torch_model()
        with warnings.catch_warnings():  # tracer and exporter notes about a graph that is fine for inference
            warnings.simplefilter("ignore")
            if backend == "openvino":
                _export_openvino(work, model_dir, network, tokenizer, quantize)
            else:
                _export_onnx(work, network, tokenizer, quantize)
        key = export_key(model_dir, backend, quantize)
        key["seconds"] = round(time.perf_counter() - start, 1)
        (work / "export.json").write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
        try:
            work.rename(folder)
        except OSError:  # another process finished the same export first
            if not (folder / "export.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("reranker: export took %.1f s", time.perf_counter() - start)


class _LogitsOnly:
    """Wraps a sequence-classification model so that export sees one output: logits, (batch, 1)."""

    def __new__(cls, network):
        import torch

        class LogitsOnly(torch.nn.Module):
            def __init__(self, inner) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kwargs["token_type_ids"] = token_type_ids
                return self.inner(**kwargs).logits

        return LogitsOnly(network).eval()


INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")  # the order of ``LogitsOnly.forward``'s arguments


def _example(tokenizer, framework: str) -> dict:
    """A padded batch of two pairs, its keys in :data:`INPUT_ORDER` (exporters bind inputs by position)."""
    pairs = [("what is a cross-encoder", "A model that reads the query and the passage together."),
             ("short", "A second, somewhat longer passage, so that the batch needs padding to one length.")]
    encoded = tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors=framework)
    return {name: encoded[name] for name in INPUT_ORDER if name in encoded}


def _export_openvino(work: Path, model_dir: Path, network, tokenizer, quantize: str) -> None:
    import openvino as ov
    import torch

    example = _example(tokenizer, "pt")
    wrapped = _LogitsOnly(network)
    with torch.no_grad():
        converted = ov.convert_model(wrapped, example_input=example)
    for port, name in zip(converted.inputs, example):
        port.get_tensor().set_names({name})
    if quantize == "int8":
        converted = _quantize_openvino(converted, model_dir, tokenizer, _max_tokens(network))
    ov.save_model(converted, work / "model.xml", compress_to_fp16=False)


def _max_tokens(network, cap: int = 256) -> int:
    """Tokens per calibration pair: ``cap``, or fewer when the model has fewer positions (RoBERTa-style
    models reserve two position ids after the padding index)."""
    positions = getattr(getattr(network, "config", None), "max_position_embeddings", None)
    return min(cap, positions - 2) if isinstance(positions, int) and positions > 2 else cap


def _quantize_openvino(converted, model_dir: Path, tokenizer, max_length: int = 256):
    import nncf

    pairs = read_calibration_pairs(model_dir)
    items = []
    for query, passage in pairs[:CALIBRATION_LIMIT]:
        encoded = tokenizer(query, passage, truncation="longest_first", max_length=max_length, return_tensors="np")
        items.append({k: v.astype(np.int64) for k, v in encoded.items()})
    logger.info("reranker: NNCF int8 quantization on %d calibration pairs", len(items))
    # NNCF draws progress bars on stdout, which belongs to the command's output (ask.py --json)
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(converted, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(items))


# Generic English (query, passage) pairs (SciFact *train*) shipped with the project's own reranker; a model
# without pairs of its own calibrates on these (activation ranges need representative text, not its labels).
SHIPPED_PAIRS = Path(__file__).resolve().parents[2] / "models" / "minilm-reranker" / CALIBRATION_PAIRS


def calibration_pairs_path(model_dir: Path) -> Path:
    """The model's own ``calibration_pairs.jsonl``, else the project's shipped pairs (when present)."""
    own = model_dir / CALIBRATION_PAIRS
    return own if own.is_file() or not SHIPPED_PAIRS.is_file() else SHIPPED_PAIRS


def read_calibration_pairs(model_dir: Path) -> list[tuple[str, str]]:
    """The (query, passage) pairs int8 quantization calibrates on; raises when there are none."""
    path = calibration_pairs_path(model_dir)
    if path != model_dir / CALIBRATION_PAIRS:
        logger.info("reranker: %s has no %s; int8 calibrates on the project's pairs %s", model_dir,
                    CALIBRATION_PAIRS, path)
    if not path.is_file():
        raise ConfigError(
            f"reranker.quantize: int8 with backend openvino calibrates on {path}, which does not exist; write a "
            f"few hundred (query, passage) pairs of training data there as JSON lines {{\"query\", \"passage\"}} "
            "(never test data), or use backend onnx (dynamic int8, no calibration) or quantize: none")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["query"], row["passage"]) for row in rows]


def _export_onnx(work: Path, network, tokenizer, quantize: str) -> None:
    import torch

    example = _example(tokenizer, "pt")
    names = list(example)
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    axes["logits"] = {0: "batch"}
    fp32 = work / ("model-fp32.onnx" if quantize == "int8" else "model.onnx")
    with torch.no_grad():
        torch.onnx.export(_LogitsOnly(network), tuple(example[n] for n in names), str(fp32), input_names=names,
                          output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(work / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        fp32.unlink()


def _openvino_runtime(folder: Path, threads: int) -> Runtime:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(folder / "model.xml"), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    names = {name for port in compiled.inputs for name in port.get_names()}
    output = compiled.output(0)
    request = compiled.create_infer_request()

    def run(features: dict[str, np.ndarray]) -> np.ndarray:
        result = request.infer({k: v for k, v in features.items() if k in names})
        return np.asarray(result[output], dtype=np.float32).reshape(-1)

    return run


def _onnx_runtime(folder: Path, threads: int) -> Runtime:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def run(features: dict[str, np.ndarray]) -> np.ndarray:
        (logits,) = session.run(["logits"], {k: v for k, v in features.items() if k in names})
        return np.asarray(logits, dtype=np.float32).reshape(-1)

    return run


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _writable(folder: Path) -> bool:
    """Whether ``folder`` exists writable or can be created (probed, not guessed from permissions)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def backend_names() -> Sequence[str]:
    return ("torch", *RUNTIMES)
