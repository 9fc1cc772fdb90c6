"""Turning a cross-encoder's raw logit into a probability of relevance (Platt scaling).

A model folder may hold ``calibration.json``: ``{"method": "platt", "a": A, "b": B, ...}``, fitted on
dev pairs (never test), so that ``sigmoid(A * logit + B)`` is the chance that the passage is relevant.
Without the file the score is ``sigmoid(logit)``, as sentence-transformers gives it. The mapping is
monotonic: it never changes the cross-encoder's own order, only what a threshold on the score means.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True, slots=True)
class Calibration:
    """``sigmoid(a * logit + b)``; ``a = 1, b = 0`` is the plain sigmoid."""

    a: float = 1.0
    b: float = 0.0

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities, float32, same shape as ``logits``."""
        z = self.a * np.asarray(logits, dtype=np.float64) + self.b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


IDENTITY = Calibration()


def load_calibration(model_dir: str | Path | None) -> Calibration:
    """The calibration stored in ``model_dir/calibration.json``, or the plain sigmoid when there is none."""
    if model_dir is None:
        return IDENTITY
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return IDENTITY
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("method") != "platt":
            raise ValueError(f"method {data.get('method')!r}, expected 'platt'")
        a, b = float(data["a"]), float(data["b"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"reranker: {path} is not a valid calibration file ({exc}); delete it to use the plain "
                          "sigmoid, or refit it") from exc
    if not (math.isfinite(a) and math.isfinite(b) and a > 0):
        raise ConfigError(f"reranker: {path} has a = {a}, b = {b}; a must be a positive finite number")
    return Calibration(a, b)


def fit_platt(logits: np.ndarray, labels: np.ndarray, *, l2: float = 1e-3, iterations: int = 100) -> Calibration:
    """Platt scaling: the ``a, b`` that minimise the log loss of ``sigmoid(a * logit + b)`` (Newton's method).

    ``labels`` are 0/1. Platt's target smoothing (``(n+ + 1) / (n+ + 2)``) keeps a separable dev
    set from pushing ``a`` to infinity. The fit runs on standardized logits (mean 0, deviation 1)
    and is mapped back, so logits far from 0 (a similarity head's ~90, say) fit as well as small ones.
    """
    raw = np.asarray(logits, dtype=np.float64)
    center, spread = (float(raw.mean()), float(raw.std())) if raw.size else (0.0, 0.0)
    spread = spread if spread > 0 else 1.0
    x = (raw - center) / spread
    y = np.asarray(labels, dtype=np.float64)
    if x.size == 0 or x.shape != y.shape:
        raise ValueError(f"need as many labels as logits, got {y.shape} and {x.shape}")
    positives, negatives = float(y.sum()), float(y.size - y.sum())
    if positives == 0 or negatives == 0:
        raise ValueError("Platt scaling needs relevant and irrelevant pairs")
    t = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(a: float, b: float) -> float:
        z = a * x + b  # log loss written stably: log(1 + e^z) - t z
        return float(np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * l2 * a * a)

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        w = p * (1 - p)
        grad = np.array([np.sum((p - t) * x) + l2 * a, np.sum(p - t)])
        hess = np.array([[np.sum(w * x * x) + l2, np.sum(w * x)], [np.sum(w * x), np.sum(w) + 1e-9]])
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6 and loss(a - scale * step[0], b - scale * step[1]) > current:
            scale /= 2  # backtracking: a full Newton step can overshoot on a nearly separable set
        a, b = a - scale * step[0], b - scale * step[1]
        previous, current = current, loss(a, b)
        if previous - current < 1e-10 * max(1.0, abs(previous)):
            break
    return Calibration(float(a / spread), float(b - a * center / spread))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: the share-weighted gap between mean score and share relevant, over ``bins`` equal-width bins."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for k in range(bins):
        mask = which == k
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)
