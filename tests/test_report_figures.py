"""Figures a reader can trust: equal accuracy-matrix panels with separate titles, legends off
the curves, a sequential map for many magnitudes, landscape planes filled everywhere."""

import matplotlib.colors as mcolors
import numpy as np
import pytest

from clbench.report import landscape_plots, plots
from clbench.report.build import gather, write
from clbench.report.landscape_plots import filled_levels, plane_figures

from test_report import FT, LORA, make_record, write_records


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the report would save, drawn (not written) so that its layout can be measured."""
    figures = []

    def save(fig, stem):
        fig.canvas.draw()
        fig.pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        figures.append((stem.name, fig, fig.canvas.get_renderer()))
        return stem.with_suffix(".png"), stem.with_suffix(".pdf")

    for module in (plots, landscape_plots):
        monkeypatch.setattr(module, "save_figure", save)
    return figures


def _overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_matrix_panels_are_equal_and_titles_and_legends_stay_clear(tmp_path, drawn):
    recs = []
    for i, name in enumerate(["l2p", "dualprompt", "coda_prompt", "inflora"]):
        recs += [make_record(name, s, c) for s, c in (LORA if i % 2 else FT).items()]
    for rank in (4, 16):  # long variant labels
        recs += [make_record("lora", s, c, method_cfg={"rank": rank, "alpha": 2 * rank, "targets": "qkv,proj,fc1"})
                 for s, c in LORA.items()]
    write(gather([write_records(tmp_path / "r", recs)]), tmp_path / "out", plots=True, html=False)
    figs = {name.split("_shapes")[0]: (fig, renderer) for name, fig, renderer in drawn}
    fig, renderer = figs["accuracy_matrices"]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 6
    sizes = {(round(ax.get_position().width, 4), round(ax.get_position().height, 4)) for ax in panels}
    assert len(sizes) == 1  # every panel the same size (one colour bar for all)
    titles = [ax.title.get_window_extent(renderer) for ax in panels]
    for i, a in enumerate(titles):
        for j, b in enumerate(titles):
            assert i == j or not _overlap(a, b)
        for ax in panels:
            assert not _overlap(a, ax.get_window_extent(renderer))
    for kind in ("accuracy_curves", "stability_plasticity_plot"):
        fig, renderer = figs[kind]
        legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend())
        box = legend.get_window_extent(renderer)
        assert all(not _overlap(box, ax.get_window_extent(renderer)) for ax in fig.axes)


def test_many_magnitudes_get_a_sequential_map():
    colors = plots.magnitude_colors(12)
    assert len({mcolors.to_hex(c) for c in colors}) == 12
    luminance = [0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b, _ in colors]
    assert all(a < b for a, b in zip(luminance, luminance[1:]))  # one direction: earlier components darker
    assert max(luminance) < 0.85  # never near-white on the white background


def test_filled_levels_cover_every_value():
    rng = np.random.default_rng(0)
    Z = np.clip(rng.normal(50, 40, (9, 9)), 0, 100)  # plateaus at 0 and 100
    values, levels, bad, flat = filled_levels(Z)
    assert not flat and levels[0] == Z.min() and levels[-1] == Z.max() and not bad.any()
    values, levels, bad, flat = filled_levels(np.full((4, 4), 100.0))
    assert flat and levels[0] < 100 < levels[-1]
    values, levels, bad, flat = filled_levels(100 + 1e-9 * rng.normal(size=(4, 4)))  # float noise is flat
    assert flat and (levels[0] < values).all() and (values < levels[-1]).all()
    Z = np.ones((4, 4))
    Z[1, 1], Z[2, 2], Z[0, 0] = np.inf, np.nan, 3.0
    values, levels, bad, flat = filled_levels(Z)
    assert bad.sum() == 2 and values[1, 1] == values[2, 2] == 3.0 and np.isfinite(values).all()


def test_plane_figures_leave_no_white_inside_the_axes(tmp_path, drawn):
    xs, ys = np.linspace(-0.5, 1.5, 15), np.linspace(-0.5, 1.3, 13)
    X, Y = np.meshgrid(xs, ys)
    r = np.hypot(X - 0.5, Y - 0.4)
    acc = np.stack([np.clip(140 - 120 * r, 0, 100), np.full_like(X, 100.0), 100 - 1e-8 * X])
    loss = np.stack([np.where(r < 0.3, np.inf, r), np.where(r < 0.3, np.nan, 1.0), np.full_like(X, 0.02)])
    plane = {"xs": xs, "ys": ys, "coords": np.array([[0, 0], [1, 0], [0.4, 0.9]]), "tasks": np.arange(1, 4),
             "solutions": np.array([1, 2, 3]), "acc": acc, "loss": loss, "acc_all": acc.mean(0), "loss_all": loss[0]}
    plane_figures(plane, "plane", tmp_path / "plane")
    assert len(drawn) == 2
    for _, fig, renderer in drawn:
        image = fig.pixels
        height = image.shape[0]
        for ax in [a for a in fig.axes if a.get_title()]:  # the panels, not their colour bars
            box = ax.get_window_extent(renderer)
            inner = image[int(height - box.y1) + 3:int(height - box.y0) - 3, int(box.x0) + 3:int(box.x1) - 3]
            white = (inner > 250).all(axis=-1).mean()
            assert white < 0.02, (ax.get_title(), white)  # markers' white edges and labels' halos only
