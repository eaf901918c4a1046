"""qlora_lessons.lora_sweeps and the committed sweeps: one point of each sweep is run again and compared.

The sweep file was written by ``benchmarks/lora_sweeps.py`` with one torch thread per run. Rerun on the same
CPU with the same torch, a point gives the same exact match (greedy answers, same seed): the test then asks
for equality. On another CPU or torch version the float kernels round differently and a few of the 360 answers
can flip; the margin there is 3 points (the spread over seeds of the sweep's scores is 1-2 points).
"""

import math
import os
import platform

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from qlora_lessons.lora_plots import plot_alpha_lr_grid, plot_rank_curve  # noqa: E402
from qlora_lessons.lora_sweeps import (  # noqa: E402
    SweepPoint,
    load_sweeps,
    run_point,
    save_sweeps,
    select,
    summarize,
    sweeps_about,
)

POINTS = load_sweeps()


def _same_machine() -> bool:
    about = sweeps_about()
    return (about["torch"] == torch.__version__ and about["machine"] == platform.machine()
            and "ATEN_CPU_CAPABILITY" not in os.environ)


def test_the_committed_sweeps_are_complete():
    assert sorted({p.r for p in select(POINTS, "rank")}) == [1, 2, 4, 8, 16]
    assert all(len(select(POINTS, "rank", r=r)) == 3 for r in (1, 2, 4, 8, 16))  # 3 seeds each
    assert len(select(POINTS, "alpha_lr")) == 9 and len(select(POINTS, "budget")) == 6
    assert {(p.r, p.convention) for p in select(POINTS, "conventions")} == {
        (r, c) for r in (4, 16, 64) for c in ("alpha/r", "alpha/sqrt(r)")}
    assert all(0 <= p.em <= 1 and p.steps == 100 for p in POINTS)


@pytest.mark.parametrize("sweep, fields", [
    ("rank", {"r": 1, "seed": 0}),
    ("alpha_lr", {"alpha": 32.0, "lr": 1e-3}),
    ("conventions", {"r": 16, "convention": "alpha/sqrt(r)"}),
    ("budget", {"target_modules": "q_proj,v_proj", "seed": 0}),
])
def test_one_point_of_each_sweep_recomputes_to_the_committed_value(sweep, fields):
    (committed,) = select(POINTS, sweep, **fields)
    again = run_point(SweepPoint(**{**committed.__dict__, "em": float("nan")}))
    assert again.trainable == committed.trainable
    margin = 0.0 if _same_machine() else 0.03
    assert abs(again.em - committed.em) <= margin, (again, committed)


def test_scaling_and_keys_of_the_conventions():
    rs = SweepPoint("conventions", "all-linear", 64, 16.0, "alpha/sqrt(r)", 3e-3, 0, 100)
    same = SweepPoint("rank", "all-linear", 64, 128.0, "alpha/r", 3e-3, 0, 100)
    assert rs.scaling == same.scaling == 2.0 and rs.key() == same.key()  # one model, run once
    assert SweepPoint("c", "all-linear", 64, 16.0, "alpha/r", 3e-3, 0, 100).scaling == 0.25  # QLoRA's
    assert SweepPoint("b", "full", 0, 0.0, "alpha/r", 3e-4, 0, 100).scaling == 0.0


def test_summary_mean_spread_and_wilson_interval():
    points = [SweepPoint("rank", "all-linear", 4, 8.0, "alpha/r", 3e-3, s, 100, em=em)
              for s, em in enumerate((0.90, 0.91, 0.92))]
    summary = summarize(points)
    assert summary.mean == pytest.approx(0.91) and summary.std == pytest.approx(0.01)
    # Wilson's interval for 0.91 on 360: centre (p + z^2/2n) / (1 + z^2/n), half-width as in the docstring
    z, n, p = 1.96, 360, 0.91
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert summary.high - summary.low == pytest.approx(2 * half) and summary.low < 0.91 < summary.high
    assert summarize([points[0]]).std == 0.0
    with pytest.raises(ValueError, match="points is empty"):
        summarize([])


def test_bad_points_are_refused_before_training():
    with pytest.raises(ValueError, match="convention must be one of"):
        run_point(SweepPoint("x", "all-linear", 4, 8.0, "alpha", 3e-3, 0, 100))
    with pytest.raises(ValueError, match="r must be >= 1"):
        run_point(SweepPoint("x", "all-linear", 0, 8.0, "alpha/r", 3e-3, 0, 100))
    with pytest.raises(TypeError, match="point must be a SweepPoint"):
        run_point({"r": 4})


def test_save_and_load_round_trip(tmp_path):
    point = SweepPoint("rank", "all-linear", 2, 4.0, "alpha/r", 3e-3, 1, 100, em=0.5, trainable=10, seconds=1.0)
    path = save_sweeps([point], tmp_path / "s.json", torch="x")
    assert load_sweeps(path) == [point] and sweeps_about(path) == {"torch": "x"}
    with pytest.raises(FileNotFoundError, match="run benchmarks/lora_sweeps.py"):
        load_sweeps(tmp_path / "missing.json")


def test_plots_draw_the_committed_sweeps():
    fig = plot_rank_curve(select(POINTS, "rank"))
    assert fig.axes[0].get_xscale() == "log" and len(fig.axes[0].get_legend().get_texts()) == 2
    grid = plot_alpha_lr_grid(select(POINTS, "alpha_lr"))
    assert grid.axes[0].images[0].get_array().shape == (3, 3) and len(grid.axes[0].texts) == 9
