"""Views of an :class:`EvaluationReport`: terminal table, ``results.json``, ``results.md``,
``per_query.tsv`` and a quality-vs-latency plot."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evaluation.metrics import Comparison
from evaluation.runner import EvaluationReport
from pipeline.versions import package_versions

PLOT = "quality_vs_latency.png"
HEADLINE = "ndcg@10"


def machine_info() -> dict[str, Any]:
    """CPU model, core count and library versions, recorded with every result."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
                            "platform": platform.platform()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    info.update(package_versions(
        ("torch", "sentence-transformers", "faiss-cpu", "bm25s", "ranx", "jieba", "PyStemmer"), runtime=False
    ))
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[1])
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def report_to_dict(report: EvaluationReport, command: str | None = None) -> dict[str, Any]:
    """Everything but the per-query values, JSON-ready."""
    c = report.collection
    return {
        "collection": {"name": c.name, "path": str(c.root), "split": c.split, "queries": len(c.queries),
                       "judgements": sum(len(d) for d in c.qrels.values()), "sampled_from": c.subset_of},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "commit": _git_commit(),
        "machine": {**machine_info(), "load_average_start": report.load_average,
                    "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "seconds": {k: round(v, 2) for k, v in report.seconds.items()},
        "reranker_pairs": report.reranker_pairs,
        "stat_test": report.stat_test,
        "max_p": report.max_p,
        "metrics": report.metric_names,
        "configs": [
            {
                "name": r.name,
                "file": str(r.spec.path),
                "overrides": list(r.spec.overrides),
                "description": r.describe(),
                "config": r.config.to_dict(),
                "index": r.index,
                "metrics": {k: round(v, 4) for k, v in r.metrics.items()},
                "latency_ms": {s: {k: round(v, 2) for k, v in d.items()} for s, d in r.latency_ms.items()},
                "run_seconds": round(r.run_seconds, 2),
            }
            for r in report.results
        ],
        "comparisons": [
            {"baseline": x.baseline, "other": x.other, "metric": x.metric, "baseline_mean": round(x.baseline_mean, 4),
             "other_mean": round(x.other_mean, 4), "delta": round(x.delta, 4), "p_value": x.p_value,
             "significant": x.significant, "wins": x.wins, "ties": x.ties, "losses": x.losses}
            for x in report.comparisons
        ],
    }


def write_outputs(report: EvaluationReport, out_dir: str | Path, command: str | None = None) -> dict[str, Path]:
    """Write results.json, results.md, per_query.tsv and the plot into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "markdown": out / "results.md",
        "per_query": out / "per_query.tsv",
        "plot": out / PLOT,
    }
    data = report_to_dict(report, command)
    paths["json"].write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(report, data), encoding="utf-8")
    write_per_query(report, paths["per_query"])
    plot_quality_vs_latency(report, paths["plot"])
    return paths


def write_per_query(report: EvaluationReport, path: Path) -> None:
    """One row per (config, query): every metric, then total latency in ms."""
    metrics = report.metric_names
    lines = ["\t".join(["config", "query_id", *metrics, "latency_ms"])]
    for r in report.results:
        for qid in report.collection.queries:
            values = [f"{r.per_query[m].get(qid, 0.0):.4f}" for m in metrics]
            latency = r.records[qid].timings.get("total", 0.0) * 1000
            lines.append("\t".join([r.name, qid, *values, f"{latency:.2f}"]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _load(value) -> str:
    return "n/a" if not value else " / ".join(f"{v:.1f}" for v in value)


def _stage_cell(latency: dict[str, dict[str, float]], stage: str) -> str:
    if stage not in latency:
        return "–"
    return f"{latency[stage]['p50']:.1f} / {latency[stage]['p95']:.1f}"


def _stages(report: EvaluationReport) -> list[str]:
    seen: list[str] = []
    for r in report.results:
        seen += [s for s in r.latency_ms if s not in seen]
    return seen


def _baseline_row(report: EvaluationReport, name: str) -> Comparison | None:
    base = report.results[0].name
    for x in report.comparisons:
        if x.baseline == base and x.other == name and x.metric == HEADLINE:
            return x
    return None


def _p(x: Comparison) -> str:
    mark = " *" if x.significant else ""
    return f"{x.delta:+.4f} (p={x.p_value:.3g}){mark}"


def to_markdown(report: EvaluationReport, data: dict[str, Any]) -> str:
    c = report.collection
    m = data["machine"]
    lines = [
        f"# {c.name} ({c.split}, {_queries(c)})",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch threads {m.get('torch_threads')}, "
        f"load average at start {_load(m.get('load_average_start'))}; commit {data.get('commit')}; "
        f"total {report.seconds['total']:.0f} s (index {report.seconds['index']:.0f} s, "
        f"queries {report.seconds['queries']:.0f} s).",
        "",
        "## Quality",
        "",
        "| config | " + " | ".join(report.metric_names) + f" | Δ {HEADLINE} vs {report.results[0].name} |",
        "|---|" + "---:|" * (len(report.metric_names) + 1),
    ]
    for r in report.results:
        cmp = _baseline_row(report, r.name)
        lines.append(f"| {r.name} | " + " | ".join(f"{r.metrics[k]:.4f}" for k in report.metric_names)
                     + f" | {_p(cmp) if cmp else '–'} |")
    stages = _stages(report)
    lines += [
        "",
        f"Paired {'t-test' if report.stat_test == 'student' else 'randomization test'} over queries (ranx); "
        f"* = p ≤ {report.max_p}. Documents are ranked by their best chunk.",
        "",
        "## Latency per query, ms (p50 / p95)",
        "",
        "| config | " + " | ".join(stages) + " |",
        "|---|" + "---:|" * len(stages),
    ]
    for r in report.results:
        lines.append(f"| {r.name} | " + " | ".join(_stage_cell(r.latency_ms, s) for s in stages) + " |")
    if report.reranker_pairs["computed"] or report.reranker_pairs["reused"]:
        lines += ["", f"Reranker pairs scored: {report.reranker_pairs['computed']}, reused from another config: "
                      f"{report.reranker_pairs['reused']} "
                      "(a reused pair counts the latency it cost when first scored)."]
    lines += ["", "## Configs", ""]
    for r in report.results:
        over = f" with `--set {' '.join(r.spec.overrides)}`" if r.spec.overrides else ""
        lines.append(f"- **{r.name}**: `{r.spec.path}`{over}: {r.describe()}; index `{r.index['digest']}` "
                     f"(built in {r.index['build_seconds']:.0f} s, 0 = reused); queries ran in {r.run_seconds:.1f} s")
    if len(report.results) > 2:
        lines += ["", "## All pairs", "", "| A | B | metric | A | B | Δ (B − A) | p | W/T/L (B vs A) |",
                  "|---|---|---|---:|---:|---:|---:|---|"]
        for x in report.comparisons:
            lines.append(f"| {x.baseline} | {x.other} | {x.metric} | {x.baseline_mean:.4f} | {x.other_mean:.4f} | "
                         f"{x.delta:+.4f} | {x.p_value:.3g}{' *' if x.significant else ''} | "
                         f"{x.wins}/{x.ties}/{x.losses} |")
    lines += ["", f"![quality vs latency]({PLOT})", ""]
    return "\n".join(lines)


def print_table(report: EvaluationReport, console=None) -> None:
    """The headline table on the terminal: metrics, latency, and the test against the first config."""
    from rich.console import Console
    from rich.table import Table

    # Piped output gets a wide console, so columns are not cut at 80 characters.
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    c = report.collection
    table = Table(title=f"{c.name} / {c.split}: {_queries(c)}", title_justify="left")
    table.add_column("config", style="bold")
    for metric in report.metric_names:
        table.add_column(metric, justify="right")
    table.add_column("p50/p95 ms", justify="right")
    table.add_column(f"Δ {HEADLINE} vs {report.results[0].name}", justify="right")
    best = max(r.metrics[HEADLINE] for r in report.results)
    for r in report.results:
        cells = []
        for metric in report.metric_names:
            value = f"{r.metrics[metric]:.4f}"
            cells.append(f"[green]{value}[/]" if metric == HEADLINE and r.metrics[metric] == best else value)
        cmp = _baseline_row(report, r.name)
        table.add_row(r.name, *cells, _stage_cell(r.latency_ms, "total"), _p(cmp) if cmp else "–")
    console.print(table)
    console.print(f"* = p ≤ {report.max_p} ({report.stat_test} paired test over queries); "
                  f"total {report.seconds['total']:.0f} s")


def plot_quality_vs_latency(report: EvaluationReport, path: Path) -> None:
    """One point per config: nDCG@10 against median latency per query (bars: p50 to p95)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for r in report.results:
        total = r.latency_ms.get("total", {"p50": 0.0, "p95": 0.0})
        x, y = max(total["p50"], 1e-3), r.metrics[HEADLINE]
        marker = "s" if r.reranked else "o"
        ax.errorbar(x, y, xerr=[[0], [max(total["p95"] - total["p50"], 0)]], fmt=marker, capsize=3)
        ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())  # plain numbers: 2, 5, 10, 20, 50 ms
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency per query, ms (median; bar to p95, log scale)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"{report.collection.name} ({report.collection.split}, {_queries(report.collection)})")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _queries(collection) -> str:
    """"300 queries", or "100 of 3219 queries (seeded sample)"."""
    if collection.subset_of:
        return f"{len(collection.queries)} of {collection.subset_of} queries (seeded sample)"
    return f"{len(collection.queries)} queries"
