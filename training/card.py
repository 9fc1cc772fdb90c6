"""The model card (``README.md``) written next to a trained reranker."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from training.trainer import TrainReport, TrainSettings


def write_model_card(out: Path, *, settings: TrainSettings, report: TrainReport | None, sources: Sequence[dict],
                     measurements: Sequence[dict], command: str, size_bytes: int, licences: Mapping[str, str]) -> Path:
    """Write ``out/README.md``: base model, data and licences, hyperparameters, numbers, the command."""
    s = asdict(settings)
    s["out"], s["work_dir"] = str(settings.out), str(settings.work_dir) if settings.work_dir else None
    lines = [
        "---", "library_name: sentence-transformers", "pipeline_tag: text-ranking", "tags: [cross-encoder, reranker]",
        "---", "", f"# {out.name}", "",
        f"A cross-encoder reranker fine-tuned from `{settings.base}` by `scripts/train_reranker.py`. "
        f"Load it with `CrossEncoder(\"{out}\")`; it scores one (query, passage) pair with one logit "
        f"(the pipeline applies a sigmoid). Weights: fp16 safetensors, {size_bytes / 2**20:.1f} MiB; the config "
        "asks for float32, so it computes in fp32 on the CPU.", "",
        "## Data", "",
    ]
    for src in sources:
        lines.append("- " + ", ".join(f"{k}: {v}" for k, v in src.items()))
    lines += ["", "Licences of the training data:", ""]
    lines += [f"- {name}: {lic}" for name, lic in licences.items()]
    lines += ["", "No test split was read for training or for choosing the checkpoint; the dev queries are "
              "held-back train queries.", "", "## Hyperparameters", "", "```json", json.dumps(s, indent=2), "```", ""]
    if report is not None:
        lines += ["## Training", "",
                  f"{report.steps} steps, {report.train_pairs} (query, passage) pairs in {report.seconds / 60:.1f} min "
                  f"({report.pairs_per_second:.1f} pairs/s). Loss: first {_fmt(report.first_losses)}, "
                  f"last {_fmt(report.last_losses)}.", ""]
        if report.dev_history:
            lines += ["Dev nDCG@10 (rerank the first stage's top candidates of held-back train queries) by step: "
                      + ", ".join(f"{e['step']}: {e['ndcg@10']:.4f}" for e in report.dev_history)
                      + f". Kept: {report.best_checkpoint}.", ""]
    if measurements:
        lines += ["## Evaluation (nDCG@10)", "",
                  "Through the pipeline's reranker stage. Reranked: the first stage's top_k ordered by this model "
                  "alone (weight 1). Mixed: w x min-max(reranker) + (1 - w) x min-max(first stage) per query, "
                  "where w is the cross-encoder's share (the reranker stage's `weight`: 1 = the reranker alone, "
                  "0 = the first stage's order), chosen on the dev queries.", "",
                  "| collection | split | queries | first stage | top_k | alone | reranked | Δ | w (dev) | mixed | Δ |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in measurements:
            for name, r in m["results"].items():
                queries = f"{m['queries']}{' (subset)' if m.get('query_subset') else ''}"
                w = (m.get("chosen_weights") or {}).get(name)
                fused = r["mixed"].get(f"{w:g}") if w is not None else None
                tail = (f"{w:g} | {fused:.4f} | {fused - r['first_stage']:+.4f}" if fused is not None else "– | – | –")
                lines.append(f"| {m['collection']} | {m['split']} | {queries} | {name} | {m['top_k']} | "
                             f"{r['first_stage']:.4f} | {r['reranked']:.4f} | {r['delta']:+.4f} | {tail} |")
        lines.append("")
    lines += ["## Reproduce", "", "```bash", command, "```", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"
