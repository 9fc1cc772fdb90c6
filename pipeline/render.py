"""Terminal and JSON views of a :class:`PipelineResult`."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.types import Hit, PipelineResult


def result_to_dict(
    result: PipelineResult, *, config: str | None = None, index_version: str | None = None
) -> dict[str, Any]:
    """A JSON-ready dict: both lists, timings in milliseconds; ``config`` and ``index_version`` when given."""
    out = {
        "query": result.query,
        "retrieved": [_hit_dict(h) for h in result.retrieved],
        "reranked": None if result.reranked is None else [_hit_dict(h) for h in result.reranked],
        "timings_ms": {k: round(v * 1000, 2) for k, v in result.timings.items()},
    }
    if config is not None:
        out["config"] = config
    if index_version is not None:
        out["index_version"] = index_version
    return out


def result_to_json(result: PipelineResult) -> str:
    return json.dumps(result_to_dict(result), ensure_ascii=False, indent=2)


def hit_to_dict(hit: Hit) -> dict[str, Any]:
    """One hit as a JSON-ready dict, with its ``rank_change``."""
    return _hit_dict(hit)


def _hit_dict(hit: Hit) -> dict[str, Any]:
    data = asdict(hit)
    data["rank_change"] = hit.rank_change
    return data


def print_side_by_side(
    result: PipelineResult, show: int = 10, snippet: int = 90, console: Console | None = None
) -> None:
    """Retrieved (first ``show``) beside reranked, with score, rank change, source and a snippet."""
    console = console or Console()
    retrieved = result.retrieved[:show]
    reranked = result.reranked
    table = Table(title=f"Query: {result.query}", title_justify="left", show_lines=False, expand=True)
    table.add_column("#", justify="right", style="bold")
    table.add_column(f"retrieved (top {len(result.retrieved)}, cosine)", ratio=1, overflow="fold")
    if reranked is not None:
        table.add_column("reranked (cross-encoder, 0..1)", ratio=1, overflow="fold")
    rows = max(len(retrieved), len(reranked or []))
    for i in range(rows):
        cells = [str(i + 1), _cell(retrieved[i], snippet, moved=False) if i < len(retrieved) else Text("")]
        if reranked is not None:
            cells.append(_cell(reranked[i], snippet, moved=True) if i < len(reranked) else Text(""))
        table.add_row(*cells)
    console.print(table)
    if reranked is None:
        console.print("reranker disabled: the first list is the answer context")
    console.print("time: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in result.timings.items()))


def _cell(hit: Hit, snippet: int, moved: bool) -> Text:
    text = Text()
    text.append(f"{hit.score:.3f} ", style="cyan")
    if moved:
        change = hit.rank_change
        style = "green" if change > 0 else "red" if change < 0 else "dim"
        arrow = f"▲{change}" if change > 0 else f"▼{-change}" if change < 0 else "="
        text.append(f"{arrow} (was #{hit.retrieval_rank}) ", style=style)
    text.append(hit.source + (f" [chunk {hit.position}]" if hit.position else ""), style="magenta")
    body = " ".join(hit.text.split())
    text.append("\n" + (body[:snippet] + "…" if len(body) > snippet else body), style="dim")
    return text
