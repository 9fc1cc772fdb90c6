"""The examples of docs/serving.md are real answers: each ``curl`` request shown is sent to the server
(``configs/offline.yaml`` over an index of ``data/``, as the page says) and the answer is checked against
the JSON shown under it, so the page cannot drift from what the server returns."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.conftest import ROOT

pytest.importorskip("fastapi")

DOC = ROOT / "docs" / "serving.md"
VOLATILE = {"id", "index_version", "created", "timings_ms"}  # differ from run to run: only their type is checked
TOLERANCE = 0.01
# Scored exactly (fp32), as the page says: the offline config's int8 scoring depends on the CPU (backend: auto:
# OpenVINO with VNNI/AMX, torch elsewhere, and torch's own int8 kernels differ between AVX2 and VNNI), which
# moves a score by up to a few hundredths; exact (fp32) scoring runs no int8 kernels, so it does not move with them.
PAGE_SETTINGS = ["reranker.quantize=none", "reranker.backend=torch"]


def examples() -> list[tuple[str, str, dict | None, object]]:
    """(name, path, JSON body or None for GET, documented answer) for each curl block followed by a JSON block."""
    text = DOC.read_text(encoding="utf-8")
    out = []
    for command, answer in re.findall(r"```bash\n(curl [^`]*?)```\n\n```json\n([^`]*?)```", text):
        command = command.replace("\\\n", " ")
        path = re.search(r"localhost:8000(/[\w/.{}-]*)", command).group(1)
        body = re.search(r"-d '(.*)'", command, re.S)
        out.append((f"{path} {body.group(1)[:40] if body else ''}".strip(), path,
                    json.loads(body.group(1)) if body else None, json.loads(answer)))
    return out


def documented(doc, real, where: str = "") -> None:
    """Fail unless ``real`` is what ``doc`` shows: every key shown, lists by their first items, strings
    (``...`` at the end: a beginning, at the start: an end), numbers within TOLERANCE."""
    if isinstance(doc, dict):
        assert isinstance(real, dict), f"{where}: expected an object, got {real!r}"
        missing = set(doc) - set(real)
        assert not missing, f"{where}: the page shows {sorted(missing)}, the server does not return them"
        for key, value in doc.items():
            if key in VOLATILE:
                assert isinstance(real[key], type(value)), f"{where}.{key}: {real[key]!r}"
            else:
                documented(value, real[key], f"{where}.{key}")
    elif isinstance(doc, list):
        assert isinstance(real, list) and len(doc) <= len(real), f"{where}: {len(doc)} items shown, got {real!r}"
        for i, (a, b) in enumerate(zip(doc, real)):
            documented(a, b, f"{where}[{i}]")
    elif isinstance(doc, str) and doc.endswith("..."):
        assert isinstance(real, str) and real.startswith(doc[:-3]), f"{where}: {real!r}"
    elif isinstance(doc, str) and doc.startswith("..."):
        assert isinstance(real, str) and real.endswith(doc[3:]), f"{where}: {real!r}"
    elif isinstance(doc, float):
        assert isinstance(real, (int, float)) and abs(real - doc) <= TOLERANCE, f"{where}: {real!r}, page {doc!r}"
    else:
        assert real == doc, f"{where}: {real!r}, page {doc!r}"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from indexer.build import build_index
    from pipeline.config import load_config
    from server import create_app

    config = load_config(ROOT / "configs" / "offline.yaml", PAGE_SETTINGS)
    index = tmp_path_factory.mktemp("docs") / "index"
    build_index(ROOT / "data", config, index)
    with TestClient(create_app({"offline": config}, {"offline": index})) as test_client:
        deadline = time.monotonic() + 300
        while test_client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield test_client


def test_the_page_has_examples_to_check():
    paths = [path for _, path, _, _ in examples()]
    assert {"/v1/ask", "/v1/rerank", "/rerank", "/v1/configs", "/v1/models"} <= set(paths), paths


@pytest.mark.slow
@pytest.mark.parametrize(("name", "path", "body", "answer"), examples(), ids=[e[0] for e in examples()])
def test_each_example_is_what_the_server_answers(client, name, path, body, answer):
    response = client.get(path) if body is None else client.post(path, json=body)
    assert response.status_code == 200, response.text
    documented(answer, response.json(), path)


def reshaped(doc, real):
    """``real`` cut to the shape ``doc`` shows (its keys, its first list items, its float precision)."""
    if isinstance(doc, dict) and isinstance(real, dict):
        return {key: value if key in VOLATILE else reshaped(value, real.get(key)) for key, value in doc.items()}
    if isinstance(doc, list) and isinstance(real, list):
        return [reshaped(a, b) for a, b in zip(doc, real)]
    if isinstance(doc, str) and doc.endswith("...") and isinstance(real, str):
        return real[: max(len(doc) - 3, 1)] + "..."
    if isinstance(doc, str) and doc.startswith("...") and isinstance(real, str):
        return "..." + real[-max(len(doc) - 3, 1):]
    if isinstance(doc, float) and isinstance(real, (int, float)):
        decimals = len(repr(doc).split(".")[1]) if "." in repr(doc) and "e" not in repr(doc) else 4
        return round(float(real), max(decimals, 2))
    return real


def rewrite_page() -> int:
    """Replace each JSON answer on the page by the server's answer to its curl request, in the shape shown:
    ``python -m tests.test_docs_examples`` after a change of the offline model or its settings."""
    import tempfile
    from pathlib import Path

    from fastapi.testclient import TestClient

    from indexer.build import build_index
    from pipeline.config import load_config
    from server import create_app

    config = load_config(ROOT / "configs" / "offline.yaml", PAGE_SETTINGS)
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        build_index(ROOT / "data", config, index)
        with TestClient(create_app({"offline": config}, {"offline": index})) as client:
            while client.get("/readyz").status_code != 200:
                time.sleep(0.1)
            text = DOC.read_text(encoding="utf-8")

            def answer(match: re.Match) -> str:
                command, shown = match.group(1), json.loads(match.group(2))
                flat = command.replace("\\\n", " ")
                path = re.search(r"localhost:8000(/[\w/.{}-]*)", flat).group(1)
                body = re.search(r"-d '(.*)'", flat, re.S)
                response = client.get(path) if body is None else client.post(path, json=json.loads(body.group(1)))
                real = reshaped(shown, response.json())
                return f"```bash\n{command}```\n\n```json\n{json.dumps(real, indent=2, ensure_ascii=False)}\n```"

            DOC.write_text(re.sub(r"```bash\n(curl [^`]*?)```\n\n```json\n([^`]*?)```", answer, text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(rewrite_page())
