"""Indexing throughput per document format, on real documents found on this machine.

For each format, a folder of real files is read (``read_corpus``: the format's reader only) and then
indexed (``build_index`` with the offline config: reading, chunking, encoding, FAISS), each timed:

* PDF: the PDF manuals under /usr/share/doc (pages counted from the reader's sections);
* HTML: the first ``--limit`` HTML pages under /usr/share/doc (manuals with navigation);
* Markdown: the first ``--limit`` ``.md`` files shipped inside the virtual environment's packages;
* DOCX: no real Word files exist here, so the same Markdown texts are written as DOCX with
  python-docx (headings as Word headings): stated as generated in the output.

Then one question whose answer is on a known page of a PDF manual, asked over the PDF index, shows
the reranked top 5 with their page numbers.

    python benchmarks/bench_formats.py [--limit 60]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import ROOT, header

DOC_ROOT = Path("/usr/share/doc")
PDF_QUESTION = "how do I create an ASN.1 element from a definitions structure"


def _collect(limit: int) -> dict[str, list[Path]]:
    site = next((ROOT / ".venv" / "lib").glob("python*/site-packages"), None)
    markdown = sorted(site.rglob("*.md"))[: limit * 2] if site else []
    def files(paths):
        return [p for p in paths if p.is_file()]

    return {
        "pdf": files(sorted(DOC_ROOT.rglob("*.pdf"))),
        "html": files(sorted(DOC_ROOT.rglob("*.html")))[:limit],
        "markdown": [p for p in files(markdown) if p.stat().st_size > 200][:limit],
    }


def _docx_from_markdown(files: list[Path], out: Path) -> None:
    import docx

    out.mkdir(parents=True)
    for i, path in enumerate(files):
        document = docx.Document()
        for line in path.read_text(errors="replace").splitlines():
            stripped = line.lstrip("#").strip()
            level = len(line) - len(line.lstrip("#"))
            if 0 < level <= 3 and stripped:
                document.add_heading(stripped, level)
            elif line.strip():
                document.add_paragraph(line.strip())
        document.save(str(out / f"{i:03d}-{path.parent.name}.docx"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=60, help="HTML and Markdown files at most")
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.yaml"))
    args = parser.parse_args()
    header("Indexing throughput per format, real documents of this machine")
    from indexer.build import build_index
    from indexer.corpus import read_corpus
    from pipeline.config import load_config
    from pipeline.pipeline import Pipeline

    config = load_config(args.config)
    work = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    try:
        files = _collect(args.limit)
        folders = {}
        for name, paths in files.items():
            folders[name] = work / name
            folders[name].mkdir()
            for i, path in enumerate(paths):
                shutil.copyfile(path, folders[name] / f"{i:03d}-{path.name}")
        folders["docx (generated from the Markdown)"] = work / "docx"
        _docx_from_markdown(files["markdown"], folders["docx (generated from the Markdown)"])

        print("| format | files | documents | pages | MB | read s | docs/s read | pages/s read | chunks | "
              "index s (read+chunk+encode) | docs/s indexed | skipped |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        indexes = {}
        for name, folder in folders.items():
            paths = [p for p in folder.iterdir() if p.is_file()]
            megabytes = sum(p.stat().st_size for p in paths) / 1e6
            start = time.perf_counter()
            corpus = read_corpus(folder)
            read_s = time.perf_counter() - start
            pages = sum(len({s.page for s in d.sections if s.page is not None}) for d in corpus.documents)
            start = time.perf_counter()
            report = build_index(folder, config, work / f"index-{folder.name}")
            index_s = time.perf_counter() - start
            indexes[folder.name] = report.path
            docs = len(corpus.documents)
            print(f"| {name} | {len(paths)} | {docs} | {pages or '-'} | {megabytes:.1f} | {read_s:.2f} | "
                  f"{docs / read_s:.1f} | {f'{pages / read_s:.1f}' if pages else '-'} | "
                  f"{report.manifest.counts['chunks']} | {index_s:.1f} | {docs / index_s:.2f} | "
                  f"{len(corpus.skipped)} |", flush=True)
            for source, why in corpus.skipped[:3]:
                print(f"  skipped {source}: {why}")

        if files["pdf"]:
            print(f"\nask over the PDF index: {PDF_QUESTION!r}")
            result = Pipeline(config, indexes["pdf"]).ask(PDF_QUESTION)
            for hit in result.hits:
                print(f"  #{hit.rank} {hit.score:.3f} {hit.source} p. {hit.page} "
                      f"{' > '.join(hit.headings)} | {hit.text[:90]!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
