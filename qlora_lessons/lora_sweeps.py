"""Sweeps of real LoRA runs on the course model: held-out score against rank, alpha and learning rate.

One point of a sweep is one fine-tuning run: the course model, LoRA added by ``add_lora`` (or no LoRA for
full fine-tuning), ``train.finetune`` for ``steps`` steps at ``lr`` with ``seed``, then exact match on the
360 held-out questions. The scaling of a point is

    scaling = alpha / r            (the LoRA paper, peft's default)
    scaling = alpha / sqrt(r)      (rsLoRA, Kalajdzievski 2023; peft ``LoraConfig(use_rslora=True)``)

``add_lora`` takes alpha and divides by r, so an rsLoRA point is run with ``alpha * sqrt(r)``, which gives
the same scaling (the layers are then identical to peft's with ``use_rslora=True``).

The sweeps are too slow for a lesson (about 40 runs), so ``benchmarks/lora_sweeps.py`` runs them and writes
``lora_sweeps.json`` next to this module; lesson 04 reads it with ``load_sweeps`` and a test runs one point of
each sweep again with ``run_point`` and compares. Every run uses one torch thread, so that a point is
reproducible on the machine that wrote it.

Left out: more than one task, more than one model, and learning-rate schedules other than the course's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

SWEEPS_FILE = Path(__file__).with_name("lora_sweeps.json")
CONVENTIONS = ("alpha/r", "alpha/sqrt(r)")


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: what was trained and how, and the held-out exact match it reached.

    ``target_modules`` is ``"full"`` for full fine-tuning (``r`` and ``alpha`` are then 0).
    Example: ``SweepPoint("rank", "all-linear", 4, 8.0, "alpha/r", 3e-3, 0, 150, em=0.9)``.
    """

    sweep: str
    target_modules: str  # "all-linear", "q_proj,v_proj" or "full"
    r: int
    alpha: float
    convention: str  # "alpha/r" or "alpha/sqrt(r)"
    lr: float
    seed: int
    steps: int
    em: float = float("nan")  # held-out exact match, 360 questions
    trainable: int = 0
    seconds: float = 0.0

    @property
    def scaling(self) -> float:
        """alpha / r, or alpha / sqrt(r) for rsLoRA; 0 for full fine-tuning."""
        if self.target_modules == "full":
            return 0.0
        return self.alpha / (math.sqrt(self.r) if self.convention == "alpha/sqrt(r)" else self.r)

    def key(self) -> tuple:
        """What defines the run: two points with one key train the same model (rsLoRA's alpha 16 at r = 64 is
        alpha 128 over r), so the sweep script runs it once."""
        return (self.target_modules, self.r, round(self.scaling, 9), self.lr, self.seed, self.steps)

    def __repr__(self) -> str:
        what = "full fine-tuning" if self.target_modules == "full" else (
            f"LoRA {self.target_modules} r={self.r} alpha={self.alpha:g} "
            f"({self.convention}, scaling {self.scaling:.3g})")
        return (f"SweepPoint({self.sweep}: {what}, lr {self.lr:g}, seed {self.seed}, {self.steps} steps "
                f"-> EM {self.em:.1%})")


def _check_point(point: SweepPoint) -> None:
    if not isinstance(point, SweepPoint):
        raise TypeError(f"point must be a SweepPoint, got {type(point).__name__}")
    if point.convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {point.convention!r}")
    if point.target_modules != "full" and point.r < 1:
        raise ValueError(f"r must be >= 1 for a LoRA point, got {point.r}")
    if point.lr <= 0 or point.steps <= 0:
        raise ValueError(f"lr and steps must be positive, got lr={point.lr}, steps={point.steps}")


def run_point(point: SweepPoint, *, model_id: str = "course-model", threads: int = 1,
              progress: bool = False) -> SweepPoint:
    """Train and score one point; return it with ``em``, ``trainable`` and ``seconds`` filled in.

    Equation: em = (correct greedy answers) / 360 on the held-out split, after ``finetune`` (AdamW, warm-up 10
    steps, cosine decay, batch 32, gradient clipping at 1.0) of the model with LoRA ``add_lora(model,
    target_modules, r, alpha')``, alpha' = alpha (alpha/r) or alpha * sqrt(r) (rsLoRA).
    Example: ``run_point(SweepPoint("rank", "all-linear", 4, 8.0, "alpha/r", 3e-3, 0, 150)).em`` -> about 0.9.
    """
    import torch

    from qlora_lessons.data import load_task
    from qlora_lessons.env import seed_everything, torch_threads
    from qlora_lessons.evaluate import exact_match
    from qlora_lessons.lora import add_lora, count_trainable
    from qlora_lessons.models import load_model
    from qlora_lessons.train import finetune

    _check_point(point)
    with torch_threads(threads):
        seed_everything(point.seed)
        model, tokenizer = load_model(model_id)
        if point.target_modules != "full":
            targets = "all-linear" if point.target_modules == "all-linear" else point.target_modules.split(",")
            alpha = point.alpha * (math.sqrt(point.r) if point.convention == "alpha/sqrt(r)" else 1.0)
            add_lora(model, targets, r=point.r, lora_alpha=alpha)
        result = finetune(model, tokenizer, load_task("train"), steps=point.steps, lr=point.lr, seed=point.seed,
                          progress=progress)
        em = exact_match(model, tokenizer, load_task("test"))
        trainable = count_trainable(model).trainable
    del torch  # imported for torch_threads' sake only
    return SweepPoint(**{**asdict(point), "em": em, "trainable": trainable, "seconds": result.seconds})


def save_sweeps(points: list[SweepPoint], path: str | Path = SWEEPS_FILE, **about) -> Path:
    """Write the points (and what ran them, ``about``) as JSON; return the path."""
    path = Path(path)
    path.write_text(json.dumps({"about": about, "points": [asdict(p) for p in points]}, indent=1) + "\n")
    return path


def load_sweeps(path: str | Path = SWEEPS_FILE) -> list[SweepPoint]:
    """The committed sweep points (``benchmarks/lora_sweeps.py`` writes them).

    Example: ``[p for p in load_sweeps() if p.sweep == "rank"]`` -> 15 points, r in 1..16, 3 seeds each.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run benchmarks/lora_sweeps.py to compute the sweeps")
    return [SweepPoint(**row) for row in json.loads(path.read_text())["points"]]


def sweeps_about(path: str | Path = SWEEPS_FILE) -> dict:
    """What ran the committed sweeps: torch version, threads, steps, total seconds."""
    return json.loads(Path(path).read_text())["about"]


def select(points: list[SweepPoint], sweep: str, **fields) -> list[SweepPoint]:
    """The points of one sweep whose fields equal ``fields``, e.g. ``select(points, "rank", r=4)``."""
    return [p for p in points if p.sweep == sweep and all(getattr(p, k) == v for k, v in fields.items())]


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its spread, and a 95% binomial interval for one score on n questions.

    ``low``/``high``: the Wilson 95% interval of the mean score on ``n`` questions (Wilson 1927), which is
    what one run on 360 questions can tell apart; ``std``: the sample standard deviation over seeds.
    """

    mean: float
    std: float
    low: float
    high: float
    seeds: int

    def __repr__(self) -> str:
        return (f"{self.mean:.1%} (seed std {self.std:.1%}, {self.seeds} seeds; "
                f"95% binomial interval of one run {self.low:.1%}-{self.high:.1%})")


def summarize(points: list[SweepPoint], n: int = 360) -> Interval:
    """Mean, seed spread and Wilson 95% interval of the exact matches of ``points``.

    Equation: mean and sample std over the points; the interval is ``binomial_interval(mean, n)``.
    Example: three runs at 0.90, 0.91, 0.92 -> mean 0.91, std 0.01, interval about 0.877-0.935.
    """
    if not points:
        raise ValueError("points is empty")
    scores = [p.em for p in points]
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else 0.0
    return Interval(mean, std, *binomial_interval(mean, n), len(scores))


def binomial_interval(p: float, n: int = 360, z: float = 1.96) -> tuple[float, float]:
    """The Wilson interval (Wilson 1927) of a score p measured on n questions, 95% for z = 1.96.

    Equation: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n).
    Example: ``binomial_interval(0.9, 360)`` -> about (0.865, 0.927): one run's score is good to +-3 points.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p must be a score between 0 and 1, got {p}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half
