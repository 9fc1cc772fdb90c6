"""Score ranked lists against relevance judgements with ranx; fold chunk hits into document hits.

Nothing here computes a ranking metric by hand: nDCG (trec_eval's linear gain),
MRR and recall come from ranx, and so does the paired significance test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.types import Hit

# Metrics of the final ranking (what the pipeline hands on) and of the first stage.
FINAL_METRICS = ("ndcg@10", "mrr@10", "recall@5")
CONTEXT_METRIC = "recall@context"
CONTEXT_PRECISION = "precision@context"


def context_precision(qrels: dict[str, dict[str, int]], passages: dict[str, list[str]]) -> dict[str, float]:
    """Per query: the share of the context's chunks (their doc ids; a merged passage lists one per chunk) from a
    relevant document.

    ``recall@context`` counts the relevant documents a generator sees; this counts how much of what it
    reads is relevant, which a per-document cap can lower (a relevant document's second chunk replaced
    by another document's chunk). An empty context scores 0.

    Example:
        >>> context_precision({"q": {"a": 1}}, {"q": ["a", "a", "b", "c"]})
        {'q': 0.5}
    """
    return {
        qid: (sum(qrels.get(qid, {}).get(doc, 0) > 0 for doc in docs) / len(docs) if docs else 0.0)
        for qid, docs in passages.items()
    }


def fold_to_documents(hits: Iterable[Hit]) -> list[tuple[str, float]]:
    """Chunk hits -> ``(doc id, score)`` per document, best first, score = the document's max.

    A document ranks where its best chunk ranks (as BEIR scores a document by its
    best passage); later chunks of the same document are dropped.

    Example:
        >>> hits = [_h("a#0", "a", .9), _h("b#0", "b", .8), _h("a#1", "a", .7)]
        >>> fold_to_documents(hits)
        [('a', 0.9), ('b', 0.8)]
    """
    best: dict[str, float] = {}
    for hit in hits:
        if hit.doc_id not in best:
            best[hit.doc_id] = hit.score
        else:
            best[hit.doc_id] = max(best[hit.doc_id], hit.score)
    return list(best.items())


def _h(chunk_id: str, doc_id: str, score: float) -> Hit:  # for the docstring example
    return Hit(chunk_id, doc_id, "", "", 0, score, 0, score, 0)


def ranking_to_run(ranking: Sequence[str]) -> dict[str, float]:
    """A ranked list of doc ids -> ranx run scores that keep exactly that order (n, n-1, ..., 1).

    Scoring by rank rather than by the stage's score means ties in the stage's
    score cannot be broken differently by the evaluator than by the pipeline.
    """
    n = len(ranking)
    return {doc_id: float(n - i) for i, doc_id in enumerate(ranking)}


@dataclass(frozen=True)
class MetricTable:
    """Mean and per-query values of each metric; per-query dicts hold every evaluated query."""

    means: dict[str, float]
    per_query: dict[str, dict[str, float]]  # metric -> query id -> value


def evaluate_rankings(
    qrels: Mapping[str, Mapping[str, int]], rankings: Mapping[str, Sequence[str]], metrics: Sequence[str]
) -> MetricTable:
    """Score one ranked list of doc ids per query with ranx.

    Every query of ``qrels`` counts: a query missing from ``rankings``, or with an
    empty ranking, scores 0 on every metric. A metric written ``recall`` (no
    cutoff) uses the whole list.
    """
    from ranx import Qrels, Run, evaluate

    qrels_obj = Qrels({qid: dict(docs) for qid, docs in qrels.items()})
    run_dict = {qid: ranking_to_run(ranking) for qid, ranking in rankings.items() if ranking and qid in qrels}
    if not run_dict:
        zeros = {metric: {qid: 0.0 for qid in qrels} for metric in metrics}
        return MetricTable({metric: 0.0 for metric in metrics}, zeros)
    run = Run(run_dict)
    means = evaluate(qrels_obj, run, list(metrics), make_comparable=True)
    if isinstance(means, float) or not isinstance(means, dict):  # ranx returns a bare float for one metric
        means = {metrics[0]: means}
    per_query = {
        metric: {qid: float(run.scores[metric].get(qid, 0.0)) for qid in qrels} for metric in metrics
    }
    return MetricTable({metric: float(value) for metric, value in means.items()}, per_query)


@dataclass(frozen=True)
class Comparison:
    """A paired test of two configs on one metric over the same queries."""

    baseline: str
    other: str
    metric: str
    baseline_mean: float
    other_mean: float
    p_value: float
    significant: bool
    wins: int
    ties: int
    losses: int

    @property
    def delta(self) -> float:
        return self.other_mean - self.baseline_mean


def compare_rankings(
    qrels: Mapping[str, Mapping[str, int]],
    rankings: Mapping[str, Mapping[str, Sequence[str]]],
    metrics: Sequence[str],
    stat_test: str = "student",
    max_p: float = 0.05,
) -> list[Comparison]:
    """Paired significance test (ranx ``compare``) between every pair of named rankings.

    Args:
        rankings: config name -> query id -> ranked doc ids.
        stat_test: ``student`` (paired t-test) or ``fisher`` (randomization test).
        max_p: the significance level.

    Returns:
        One :class:`Comparison` per ordered pair (a, b) with a listed before b, per metric.
    """
    from ranx import Qrels, Run, compare

    names = list(rankings)
    if len(names) < 2:
        return []
    qrels_obj = Qrels({qid: dict(docs) for qid, docs in qrels.items()})
    runs = []
    for name in names:
        run_dict = {qid: ranking_to_run(r) for qid, r in rankings[name].items() if r and qid in qrels}
        if not run_dict:  # ranx cannot hold an empty run; a dummy miss scores 0 everywhere
            run_dict = {next(iter(qrels)): {"\x00no-result": 1.0}}
        runs.append(Run(run_dict, name=name))
    report = compare(
        qrels_obj, runs, list(metrics), stat_test=stat_test, max_p=max_p, make_comparable=True, rounding_digits=6
    ).to_dict()
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for metric in metrics:
                p = float(report[a]["comparisons"][b][metric])
                wtl = report[b]["win_tie_loss"][a][metric]
                out.append(
                    Comparison(a, b, metric, float(report[a]["scores"][metric]), float(report[b]["scores"][metric]),
                               p, p <= max_p, int(wtl["W"]), int(wtl["T"]), int(wtl["L"]))
                )
    return out
