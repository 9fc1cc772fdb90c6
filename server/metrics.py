"""Prometheus metrics of one app: requests and latency per endpoint, time per pipeline stage, the rerank queue."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The app's collectors, in a registry of its own (several apps can live in one process, as in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rag_requests", "HTTP requests answered, by endpoint and status code", ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rag_request_seconds", "Time to answer a request, by endpoint", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.stage = Histogram(
            "rag_stage_seconds", "Time spent per pipeline stage (embed, search, retrieve, rerank, total)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.rerank_batch_pairs = Histogram(
            "rag_rerank_batch_pairs", "Query-passage pairs per cross-encoder batch",
            buckets=(1, 5, 10, 25, 50, 100, 200, 400, 1000, 4000), registry=self.registry,
        )
        self.rerank_batch_requests = Histogram(
            "rag_rerank_batch_requests", "Requests whose pairs shared one cross-encoder batch",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry,
        )
        self.queue_rejections = Counter(
            "rag_rerank_queue_rejections", "Requests refused (503) because the rerank queue was full",
            registry=self.registry,
        )
        self.index_swaps = Counter(
            "rag_index_swaps", "Index versions swapped in while serving", registry=self.registry
        )
        self.ready = Gauge("rag_ready", "1 when models and index are loaded", registry=self.registry)
        self.cache_lookups = Counter(
            "rag_cache_lookups", "Answers looked up in the response cache, by result (hit or miss)", ["result"],
            registry=self.registry,
        )

        self.jobs = Counter(
            "rag_ingest_jobs", "Ingestion jobs finished, by state (done or failed)", ["state"], registry=self.registry,
        )
        self.job_files = Counter(
            "rag_ingest_files", "Files of finished ingestion jobs, by outcome (indexed, duplicate, failed, removed)",
            ["outcome"], registry=self.registry,
        )
        self.job_seconds = Histogram(
            "rag_ingest_job_seconds", "Time an ingestion job ran, from its start to its end",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800), registry=self.registry,
        )

    def observe_job(self, state: str, outcomes: list[str], seconds: float) -> None:
        self.jobs.labels(state).inc()
        for outcome in outcomes:
            self.job_files.labels(outcome).inc()
        self.job_seconds.observe(seconds)

    def observe_timings(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage.labels(stage).observe(seconds)

    def observe_batch(self, requests: int, pairs: int, seconds: float) -> None:
        self.rerank_batch_requests.observe(requests)
        self.rerank_batch_pairs.observe(pairs)
        self.stage.labels("rerank_batch").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
