"""Ingestion: documents per second through an HTTP upload vs the CLI build, and /v1/ask latency during a job vs idle.

One run, one machine, the same files: the first ``--docs`` SciFact documents written as ``.txt`` files.

1. ``scripts/build_index.py`` builds them into an index (a process of its own: the wall time counts the
   model loading, as a user of the CLI waits for it; the build's own seconds are shown too);
2. ``scripts/serve.py`` serves that index as the default collection (response cache off);
3. ``--queries`` SciFact questions are asked one at a time while the server is idle (p50/p95);
4. a collection is created and every file is uploaded in one multipart request; the job is followed to its
   end (documents/second from the request to the published version) while a client keeps asking the
   same questions one at a time; the latencies of the questions answered while the job ran are the
   "during ingestion" figures.

    python benchmarks/bench_ingest.py [--docs 300] [--queries 30] [--config configs/offline.yaml]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_serve import start_server
from common import ROOT, SHARED_DATA, header


def write_documents(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    with gzip.open(SHARED_DATA / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            doc = json.loads(line)
            path = folder / f"scifact-{doc['_id']}.txt"
            path.write_text(f"{doc.get('title', '')}\n\n{doc['text']}\n", encoding="utf-8")
            paths.append(path)
            if len(paths) == count:
                break
    return paths


def questions(count: int) -> list[str]:
    out = []
    with open(SHARED_DATA / "scifact" / "queries.jsonl", encoding="utf-8") as lines:
        for line in lines:
            out.append(json.loads(line)["text"])
            if len(out) == count:
                break
    return out


def percentiles(latencies: list[float]) -> str:
    if not latencies:
        return "no answers"
    ms = 1000 * np.asarray(latencies)
    return f"p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms ({len(ms)} questions)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--config", default=str(ROOT / "configs" / "offline.yaml"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    import httpx

    header("Ingestion through HTTP vs the CLI; /v1/ask while a job runs vs idle")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    proc = None
    try:
        files = write_documents(tmp / "files", args.docs)
        megabytes = sum(p.stat().st_size for p in files) / 2**20
        print(f"documents: {len(files)} SciFact abstracts as .txt ({megabytes:.1f} MB); config {args.config}")

        start = time.perf_counter()
        build = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_index.py"), str(tmp / "files"),
                                "--index", str(tmp / "index"), "--config", args.config],
                               capture_output=True, text=True)
        cli_wall = time.perf_counter() - start
        if build.returncode != 0:
            raise SystemExit(f"build_index.py failed:\n{build.stderr[-2000:]}")
        version = (tmp / "index" / "CURRENT").read_text().strip()
        manifest = json.loads((tmp / "index" / version / "manifest.json").read_text())
        build_s = sum(manifest["build_seconds"].values())
        chunks = manifest["counts"]["chunks"]

        proc, url = start_server(args.config, tmp / "index", [f"server.data_dir={tmp / 'data'}", "server.cache_size=0",
                                                             f"server.max_upload_files={args.docs}"])
        asked = questions(args.queries)
        with httpx.Client(base_url=url, timeout=300) as http:
            http.post("/v1/ask", json={"query": "warm up"})
            idle = []
            for query in asked:
                begin = time.perf_counter()
                assert http.post("/v1/ask", json={"query": query}).status_code == 200
                idle.append(time.perf_counter() - begin)

            assert http.post("/v1/collections", json={"name": "bench"}).status_code == 201
            busy: list[tuple[float, float]] = []  # (start, seconds)
            errors = []
            stop = threading.Event()

            def ask_loop() -> None:
                with httpx.Client(base_url=url, timeout=300) as client:
                    i = 0
                    while not stop.is_set():
                        begin = time.perf_counter()
                        status = client.post("/v1/ask", json={"query": asked[i % len(asked)]}).status_code
                        busy.append((begin, time.perf_counter() - begin))
                        if status != 200:
                            errors.append(status)
                        i += 1

            asker = threading.Thread(target=ask_loop, daemon=True)
            asker.start()
            time.sleep(1.0)
            start = time.perf_counter()
            response = http.post("/v1/collections/bench/documents",
                                 files=[("files", (p.name, p.read_bytes())) for p in files])
            assert response.status_code == 202, response.text
            job_id = response.json()["job"]["id"]
            uploaded = time.perf_counter() - start
            while (job := http.get(f"/v1/jobs/{job_id}").json())["state"] not in ("done", "failed"):
                time.sleep(0.1)
            http_wall = time.perf_counter() - start
            job_end = time.perf_counter()
            time.sleep(1.0)
            stop.set()
            asker.join()
            assert job["state"] == "done", job
        during = [s for begin, s in busy if start <= begin and begin + s <= job_end]

        print()
        print("| path | documents | chunks | seconds | documents/s |")
        print("|---|---:|---:|---:|---:|")
        print(f"| CLI `build_index.py` (process wall, model loading included) | {len(files)} | {chunks} | "
              f"{cli_wall:.1f} | {len(files) / cli_wall:.1f} |")
        print(f"| CLI, the build alone (manifest's build_seconds) | {len(files)} | {chunks} | {build_s:.1f} | "
              f"{len(files) / build_s:.1f} |")
        print(f"| HTTP upload (one request, {uploaded:.1f} s) + job to the published version | {len(files)} | "
              f"{job['progress']['chunks_total']} | {http_wall:.1f} | {len(files) / http_wall:.1f} |")
        print(f"CLI build stages (s): {json.dumps(manifest['build_seconds'])}")
        print()
        print(f"/v1/ask idle:                {percentiles(idle)}")
        print(f"/v1/ask during the job:      {percentiles(during)}; errors {len(errors)}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
