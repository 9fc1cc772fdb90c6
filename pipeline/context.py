"""Context assembly: from the reranked candidates to the ``top_n`` passages handed to a generator.

Two rules, both set in the config's ``context:`` section:

* at most ``max_chunks_per_doc`` chunks of one document among the first ``top_n``: a document's
  further chunks move behind every other document's chunks (in their reranked order), so the
  context covers more documents, yet still fills ``top_n`` when few documents match;
* neighbouring chunks of one document (consecutive positions, same page) that both made the cut
  become one passage: the texts joined without their shared overlap, at the better chunk's rank
  and score, with every position listed in ``Hit.positions``.

Documents keep the order of their best chunk, so document-level metrics are unchanged; what
changes is which chunks fill the context (``recall@context`` in :mod:`evaluation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pipeline.types import Hit


def assemble_context(
    hits: Sequence[Hit], top_n: int, max_chunks_per_doc: int | None = None, merge_neighbours: bool = False
) -> list[Hit]:
    """``top_n`` passages from ``hits`` (best first): chunks under the per-document cap, neighbours merged.

    Returns new hits ranked 1..n; n is ``top_n`` unless there are too few hits (a merged passage
    counts once, so merging lets one more candidate in).

    Example:
        >>> hits = [_hit("a", 0), _hit("a", 1), _hit("a", 2), _hit("b", 0)]
        >>> [(h.doc_id, h.positions or (h.position,)) for h in assemble_context(hits, 3, 2, True)]
        [('a', (0, 1, 2)), ('b', (0,))]
    """
    if max_chunks_per_doc is None:
        order = list(hits)
    else:
        seen: dict[str, int] = {}
        first, later = [], []
        for hit in hits:
            seen[hit.doc_id] = seen.get(hit.doc_id, 0) + 1
            (first if seen[hit.doc_id] <= max_chunks_per_doc else later).append(hit)
        order = first + later
    chosen = order[:top_n]
    if merge_neighbours:
        passages = _merge_neighbours(chosen)
        for hit in order[top_n:]:  # each merge frees a place: take the next candidate
            if len(passages) >= top_n:
                break
            chosen.append(hit)
            passages = _merge_neighbours(chosen)
        chosen = passages
    return [replace(hit, rank=rank) for rank, hit in enumerate(chosen, start=1)]


def _merge_neighbours(hits: list[Hit]) -> list[Hit]:
    """Join runs of consecutive positions of one document (same page) into one passage at the run's best place."""
    groups: dict[tuple[str, int | None], list[Hit]] = {}
    for hit in hits:
        groups.setdefault((hit.doc_id, hit.page), []).append(hit)
    merged_at: dict[str, Hit] = {}  # chunk id of a run's best hit -> the merged passage
    absorbed: set[str] = set()
    for group in groups.values():
        if len(group) < 2:
            continue
        ordered = sorted(group, key=lambda h: h.position)
        run = [ordered[0]]
        for hit in ordered[1:] + [None]:
            if hit is not None and hit.position == run[-1].position + 1:
                run.append(hit)
                continue
            if len(run) > 1:
                best = min(run, key=lambda h: h.rank)
                merged_at[best.chunk_id] = replace(
                    best, text=_join([h.text for h in run]), positions=tuple(h.position for h in run),
                    headings=_common(h.headings for h in run),
                )
                absorbed.update(h.chunk_id for h in run if h is not best)
            run = [hit] if hit is not None else []
    return [merged_at.get(h.chunk_id, h) for h in hits if h.chunk_id not in absorbed]


def _join(texts: list[str]) -> str:
    """Consecutive chunk texts as one, the overlap between neighbours (a suffix of one, prefix of the next) once."""
    out = texts[0]
    for text in texts[1:]:
        shared = _overlap(out, text)
        out += text[shared:] if shared else "\n" + text
    return out


def _overlap(a: str, b: str) -> int:
    """The length of the longest suffix of ``a`` that is a prefix of ``b`` (overlaps under 4 characters: 0)."""
    probe = b[:4]
    if not probe:
        return 0
    start = max(0, len(a) - len(b))
    best = 0
    while (at := a.find(probe, start)) >= 0:
        if b.startswith(a[at:]):
            best = len(a) - at
            break
        start = at + 1
    return best


def _common(paths) -> tuple[str, ...]:
    paths = list(paths)
    out = paths[0]
    for path in paths[1:]:
        n = 0
        while n < min(len(out), len(path)) and out[n] == path[n]:
            n += 1
        out = out[:n]
    return out


def _hit(doc_id: str, position: int) -> Hit:  # for the docstring example
    return Hit(f"{doc_id}#{position}", doc_id, f"{doc_id}{position}", "", position, 1.0, 1, 1.0, 1)
