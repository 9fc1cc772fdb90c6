"""Terminal and JSON views of a :class:`PipelineResult` (the two lists, and the answer when there is one)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.types import Answer, Explanation, Hit, PipelineResult


def result_to_dict(
    result: PipelineResult, *, config: str | None = None, index_version: str | None = None
) -> dict[str, Any]:
    """A JSON-ready dict: both lists, timings in milliseconds; ``config`` and ``index_version`` when given."""
    out = {
        "query": result.query,
        "retrieved": [_hit_dict(h) for h in result.retrieved],
        "reranked": None if result.reranked is None else [_hit_dict(h) for h in result.reranked],
        "timings_ms": {k: round(v * 1000, 2) for k, v in result.timings.items()},
        "notes": list(result.notes),
    }
    if result.answer is not None or result.answer_error is not None:
        out["answer"] = None if result.answer is None else answer_to_dict(result.answer)
        out["answer_error"] = result.answer_error
    if result.explanation is not None:
        out["explain"] = explanation_to_dict(result.explanation)
    if config is not None:
        out["config"] = config
    if index_version is not None:
        out["index_version"] = index_version
    return out


def explanation_to_dict(explanation: Explanation) -> dict[str, Any]:
    """An explanation as JSON: the settings, and per candidate (first-stage order) why it is where it is.

    A score the reranker did not compute (the language guard) is null, with ``skipped`` true.
    """
    def number(value: float | None) -> float | None:
        return None if value is None or math.isnan(value) else round(value, 6)

    return {
        "top_k": explanation.top_k, "top_n": explanation.top_n, "weight": explanation.weight,
        "mix": explanation.mix, "max_chunks_per_doc": explanation.max_chunks_per_doc,
        "merge_neighbours": explanation.merge_neighbours, "filter": explanation.filter,
        "candidates": [
            {"chunk_id": c.chunk_id, "doc_id": c.doc_id, "source": c.source,
             "first_stage": {"rank": c.first_stage_rank, "score": number(c.first_stage_score),
                             "retrievers": {name: {"rank": rank, "score": number(score)}
                                            for name, rank, score in c.retrievers} or None},
             "reranker": None if c.reranker_score is None and c.reranker_raw is None else {
                 "raw": number(c.reranker_raw), "calibrated": number(c.reranker_score), "skipped": c.skipped},
             "mixed": number(c.mixed), "rerank_rank": c.rerank_rank, "final_rank": c.final_rank,
             "reason": c.reason}
            for c in explanation.candidates
        ],
    }


def print_explanation(explanation: Explanation, console: Console | None = None) -> None:
    """One row per candidate: first-stage place and score, the reranker's raw and calibrated score, the
    mixed score and its place, the final place, and why it left the final list."""
    console = console or Console()
    weight = "" if explanation.weight is None else f"; weight {explanation.weight:g}, mix {explanation.mix}"
    cap = "" if explanation.max_chunks_per_doc is None else f"; at most {explanation.max_chunks_per_doc} per document"
    table = Table(title=f"Why: top_k {explanation.top_k} -> top_n {explanation.top_n}{weight}{cap}"
                        + (f"; filter {explanation.filter}" if explanation.filter else ""),
                  title_justify="left", expand=True)
    for name, justify in (("first", "right"), ("score", "right"), ("retrievers", "left"), ("raw", "right"),
                          ("calibrated", "right"), ("mixed", "right"), ("reranked", "right"), ("final", "right"),
                          ("left because", "left"), ("source", "left")):
        table.add_column(name, justify=justify, overflow="fold")

    def fmt(value: float | None) -> str:
        return "-" if value is None else "skipped" if math.isnan(value) else f"{value:.3f}"

    for c in explanation.candidates:
        retrievers = " ".join(f"{name} #{rank}" for name, rank, _ in c.retrievers)
        table.add_row(f"#{c.first_stage_rank}", fmt(c.first_stage_score), retrievers, fmt(c.reranker_raw),
                      fmt(c.reranker_score), fmt(c.mixed), "-" if c.rerank_rank is None else f"#{c.rerank_rank}",
                      "-" if c.final_rank is None else f"#{c.final_rank}", c.reason or "", c.source)
    console.print(table)


def result_to_json(result: PipelineResult) -> str:
    return json.dumps(result_to_dict(result), ensure_ascii=False, indent=2)


def answer_to_dict(answer: Answer) -> dict[str, Any]:
    """An answer as a JSON-ready dict: text, ``annotated`` text (attributed citations marked ``[n*]``),
    citations with their origin, the numbered passages, the dropped numbers, tokens and timings."""
    return {
        "text": answer.text,
        "annotated": annotate(answer),
        "sentences": list(answer.sentences),
        "citations": [
            {"number": c.number, "sentence": c.sentence, "origin": c.origin,
             "similarity": None if c.similarity is None else round(c.similarity, 4), "supported": c.supported,
             "chunk_id": answer.passages[c.number - 1].chunk_id, "source": answer.passages[c.number - 1].source}
            for c in answer.citations
        ],
        "cited": answer.cited,
        "dropped": list(answer.dropped),
        "passages": [
            {"number": i, "chunk_id": h.chunk_id, "doc_id": h.doc_id, "source": h.source, "title": h.title,
             "page": h.page, "headings": list(h.headings), "where": where(h)}
            for i, h in enumerate(answer.passages, start=1)
        ],
        "generator": answer.generator,
        "model": answer.model,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "trimmed": answer.trimmed,
        "finish_reason": answer.finish_reason,
        "timings_ms": {k: round(v * 1000, 2) for k, v in answer.timings.items()},
    }


_END = re.compile(r"^(.*?)([.!?。！？]*)$", re.S)


def annotate(answer: Answer) -> str:
    """The answer's sentences with the attributed citations added as ``[n*]`` (the model's stay ``[n]``).

    Example:
        ``"Low vitamin D weakens muscles [1*]. It also hurts the bones [2]."``
    """
    out = []
    for i, sentence in enumerate(answer.sentences):
        added = "".join(f"[{c.number}*]" for c in answer.citations if c.sentence == i and c.origin == "attributed")
        if added and not sentence.endswith("]"):
            body, stop = _END.match(sentence).groups()
            sentence = f"{body.rstrip()} {added}{stop}"
        elif added:
            sentence = f"{sentence}{added}"
        out.append(sentence)
    return " ".join(out)


def print_answer(result: PipelineResult, console: Console | None = None) -> None:
    """The answer under the two lists: its text with citations, then each cited source and how it was cited."""
    console = console or Console()
    answer = result.answer
    if answer is None:
        if result.answer_error:
            console.print(Text(f"no answer: {result.answer_error}", style="red"))
        return
    spent = answer.timings.get("generate", 0.0)
    first = answer.timings.get("first_token")
    head = (f"Answer ({answer.generator}: {answer.model}; {answer.completion_tokens} tokens in {spent:.1f} s"
            + (f", first after {first:.1f} s" if first is not None else "") + ")")
    console.print(Text(head, style="bold"))
    console.print(annotate(answer) or "(empty answer)", markup=False, highlight=False)
    if answer.finish_reason == "length":
        console.print(Text("(cut at generator.max_tokens)", style="dim"))
    console.print(Text("Sources:", style="bold"))
    if not answer.cited:
        console.print(Text("  none: no sentence cites or resembles a passage", style="dim"))
    for number in answer.cited:
        hit = answer.passages[number - 1]
        marks = [c for c in answer.citations if c.number == number]
        how = []
        if any(c.origin == "model" and c.supported for c in marks):
            how.append("cited by the model")
        if any(c.origin == "model" and not c.supported for c in marks):
            low = min(c.similarity for c in marks if c.origin == "model" and not c.supported)
            how.append(f"cited by the model but not supported (similarity {low:.2f})")
        if any(c.origin == "attributed" for c in marks):
            best = max(c.similarity for c in marks if c.origin == "attributed")
            how.append(f"attributed* by similarity ({best:.2f})")
        line = Text(f"  [{number}] ")
        line.append(where(hit), style="magenta")
        line.append(f"  {'; '.join(how)}", style="dim")
        console.print(line)
    if answer.dropped:
        console.print(Text(f"dropped citations outside 1..{len(answer.passages)}: "
                           + ", ".join(f"[{n}]" for n in answer.dropped), style="yellow"))
    if answer.trimmed:
        console.print(Text(f"{answer.trimmed} passage(s) cut or left out to fit the model's window", style="yellow"))


def where(hit: Hit) -> str:
    """Where a hit comes from, for people: ``manual.pdf p. 12 › Installation › Linux``.

    A chunk of an unstructured document shows its place instead (``notes.txt [chunk 3]``), and a
    passage merged from neighbouring chunks lists them (``[chunks 3-4]``).
    """
    out = hit.source
    if hit.page is not None:
        out += f" p. {hit.page}"
    if hit.headings:
        out += "".join(f" › {heading}" for heading in hit.headings)
    if len(hit.positions) > 1:
        out += f" [chunks {hit.positions[0]}-{hit.positions[-1]}]"
    elif hit.page is None and not hit.headings and hit.position:
        out += f" [chunk {hit.position}]"
    return out


def hit_to_dict(hit: Hit) -> dict[str, Any]:
    """One hit as a JSON-ready dict, with its ``rank_change``."""
    return _hit_dict(hit)


def _hit_dict(hit: Hit) -> dict[str, Any]:
    data = asdict(hit)
    del data["fused_from"]  # a hybrid hit's per-retriever places: in the explanation (explain: true) only
    data["headings"] = list(hit.headings)  # as JSON gives it back
    data["positions"] = list(hit.positions or (hit.position,))  # every chunk a (merged) passage holds
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
    for note in result.notes:
        console.print(Text(f"note: {note}", style="yellow"))
    console.print("time: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in result.timings.items()))


def _cell(hit: Hit, snippet: int, moved: bool) -> Text:
    text = Text()
    text.append(f"{hit.score:.3f} ", style="cyan")
    if moved:
        change = hit.rank_change
        style = "green" if change > 0 else "red" if change < 0 else "dim"
        arrow = f"▲{change}" if change > 0 else f"▼{-change}" if change < 0 else "="
        text.append(f"{arrow} (was #{hit.retrieval_rank}) ", style=style)
    text.append(where(hit), style="magenta")
    body = " ".join(hit.text.split())
    text.append("\n" + (body[:snippet] + "…" if len(body) > snippet else body), style="dim")
    return text
