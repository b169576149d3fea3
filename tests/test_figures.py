"""Every figure, rendered for each configuration family it can be asked for.

What can be checked without eyes: titles and legends name what was run, no
artist leaves the figure, no panel is drawn empty, and a PDF lands beside
every PNG.
"""
import json
import os
import re

import ml_collections
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from configs import collapse as collapse_configs
from configs import embedded
from resjax import activations, analysis, collapse, files, probes, sharding, train
from resjax.plotting import collapse as plots
from resjax.plotting import analysis as analysis_plots
from resjax.plotting import layers

_DIMS = (1, 2, 3, 5, 8)


def _drawn(fig):
  """Draws `fig` on an Agg canvas; returns its renderer."""
  FigureCanvasAgg(fig)
  renderer = fig.canvas.get_renderer()
  fig.draw(renderer)
  return renderer


def _texts(fig) -> list[str]:
  """Every visible, non-empty text of the figure (titles, labels, legends, notes)."""
  from matplotlib.text import Text
  return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


def _legend_texts(fig) -> list[str]:
  from matplotlib.legend import Legend
  return [t.get_text() for leg in fig.findobj(Legend) for t in leg.get_texts()]


def _inside(ext, box, label) -> None:
  assert (ext.x0 >= box.x0 - 1 and ext.y0 >= box.y0 - 1 and ext.x1 <= box.x1 + 1
          and ext.y1 <= box.y1 + 1), f"{label} leaves the figure: {ext} vs {box.bounds}"


def _check_layout(fig) -> None:
  """No drawn artist outside the figure; every axes holds data; legends clear of titles."""
  renderer = _drawn(fig)
  box = fig.bbox
  for ax in fig.axes:
    # Drawn ticks, labels, title and the axes' legends (legends placed outside too).
    name = ax.get_title() or ax.get_title(loc="left")
    _inside(ax.get_tightbbox(renderer), box, f"panel {name!r}")
    assert ax.get_visible() and ax.has_data(), f"empty panel: {name!r}"
    titles = [t for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]
    for leg in ax.findobj(lambda a: a.__class__.__name__ == "Legend"):
      for title in titles:
        assert not leg.get_window_extent(renderer).overlaps(
            title.get_window_extent(renderer)), f"a legend covers {title.get_text()!r}"
  for artist in [*fig.texts, *fig.legends, fig._suptitle]:
    if artist is not None and artist.get_visible():
      _inside(artist.get_window_extent(renderer), box, repr(artist))


def _check_files(fig, path) -> None:
  written = files.save_figure(fig, str(path))
  assert written == [str(path), str(path)[:-4] + ".pdf"]
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(written[1], "rb") as f:
    assert f.read(5) == b"%PDF-"



def test_save_figure_png_is_the_tight_savefig_png(tmp_path):
  """One draw serves the PNG and the layout: the PNG is savefig(bbox_inches='tight')'s,
  also where an artist reaches outside the figure (then drawn again)."""
  import io
  from matplotlib import figure as mfigure
  from PIL import Image
  for outside in (False, True):
    fig = mfigure.Figure(figsize=(4, 2.5))
    ax = fig.add_subplot()
    ax.plot([0, 1, 4], [2, 0, 3], marker="o")
    ax.set_title("a title", loc="left")
    if outside:
      fig.suptitle("far out", x=0.1, y=1.1)
    canvas_before = fig.canvas
    files.save_figure(fig, str(tmp_path / f"f{outside}.png"), dpi=120)
    assert fig.canvas is canvas_before and fig.dpi == 100  # Left as it was.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    expected = np.asarray(Image.open(buf)).astype(int)
    written = np.asarray(Image.open(tmp_path / f"f{outside}.png")).astype(int)
    assert written.shape == expected.shape
    if outside:  # The box grew to the title above the figure.
      assert written.shape[0] > 1.1 * 2.5 * 120
    assert np.abs(written - expected).mean() < 1.0  # At most antialiasing at a shift.

# ------------------------------------------------------------------ the sweep


def _sweep(names, manifold="spiral", ds=(2,)):
  grid = collapse.SweepSpec(activations=tuple(names), dims=_DIMS, seeds=3, points=120,
                       manifold=manifold, ds=ds, chunk=0)
  shown = plots.focus_activation(tuple(names), "relu")  # What collapse.run asks for.
  rec = collapse.figure_recoveries(grid, shown, (2, 5)) if manifold == "spiral" else None
  return collapse.sweep(grid), rec


FAMILIES = {"all": activations.names(), "one": ("relu",), "non_relu": ("tanh", "identity")}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_collapse_figure_follows_what_was_swept(family, tmp_path):
  names = FAMILIES[family]
  res, rec = _sweep(names)
  fig = plots.collapse_figure(res, rec)
  _check_layout(fig)
  title = fig.get_suptitle()
  assert ("ReLU collapse" in title) == ("relu" in names), title
  for name in names if len(names) < len(activations.names()) else ():
    assert name in title
  texts, legends = _texts(fig), _legend_texts(fig)
  focus = "relu" if "relu" in names else names[0]
  # Panel a: recoveries of a swept activation; panel b names it.
  assert any(f"{focus}(T x)" in t for t in texts), texts
  assert any(t.startswith(f"{focus}: what comes back") for t in texts)
  # Panel c's legend names every activation that was swept, and only those.
  for name in activations.names():
    assert (name in legends) == (name in names), (name, legends)
  # The p = 1/2 Binomial formula only where it applies.
  half = [t for t in legends if "½" in t or "1/2" in t]
  assert bool(half) == ("relu" in names), half
  # No mathtext, tick labels included: each would be parsed once per resolution.
  from matplotlib import text as mtext
  math = [t.get_text() for t in fig.findobj(mtext.Text) if "$" in t.get_text()]
  assert not math, math
  _check_files(fig, tmp_path / "collapse.png")


def test_log_axes_label_powers_of_ten_in_plain_text():
  labels = [plots._power_of_ten(v) for v in (1e-6, 1e-3, 0.1, 1.0, 10.0, 2e-3, 0.5)]
  assert labels == ["10⁻⁶", "10⁻³", "10⁻¹", "10⁰", "10¹", "", ""]


def test_overlapping_refit_curves_are_marked_and_named():
  res, rec = _sweep(("relu", "relu6", "leaky_relu", "identity"))
  fig = plots.collapse_figure(res, rec)
  _drawn(fig)
  refit_ax = next(ax for ax in fig.axes if ax.get_title().startswith("shape lost"))
  assert any("relu" in t.get_text() and "overlap" in t.get_text() for t in refit_ax.texts)
  marked = {line.get_color(): line.get_marker() for line in refit_ax.get_lines()
            if line.get_xdata().size and line.get_marker() not in (None, "None", "")}
  assert len(set(marked.values())) >= 2, marked  # distinct markers for the overlapping ones


def test_ball_figure_draws_theory_as_dashed_lines(tmp_path):
  res, _ = _sweep(("relu", "tanh"), manifold="ball", ds=(1, 2))
  fig = plots.collapse_figure(res)
  _check_layout(fig)
  assert "ReLU collapse (relu, tanh)" in fig.get_suptitle()
  ax = next(ax for ax in fig.axes if "collapsed fraction" in ax.get_title())
  assert "dashed: theory" in ax.get_title()
  theory = [l for l in ax.get_lines() if l.get_linestyle() == "--"]
  assert len(theory) == 2 and all(l.get_marker() in ("None", None, "") for l in theory)
  assert {"d = 1", "d = 2"} <= set(_legend_texts(fig))
  _check_files(fig, tmp_path / "ball.png")


def test_sweep_run_writes_png_and_pdf_for_a_non_relu_set(tmp_path):
  config = collapse_configs.get_config("quick")
  config.activations = ("tanh", "identity")
  config.dims, config.seeds, config.manifold.points = _DIMS, 2, 100
  config.figure.dims = (2, 5)  # figure.activation stays relu, which was not swept
  collapse.run(config, str(tmp_path))
  for ext in ("png", "pdf"):
    assert os.path.getsize(tmp_path / f"collapse.{ext}") > 0


# ------------------------------------------------------------------ analysis


def _probed(label, config):
  """probes.run on a freshly initialised net (no training needed to draw the figures)."""
  ds = train.load_data(config)
  import jax
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train.create_train_state(config, mesh, ds.input_shape, ds.num_classes,
                                   mean=ds.mean, std=ds.std)
  res = probes.run(state, None, ds, batch_size=32, grad_batches=2, grad_batch_size=32,
                   max_examples=64)
  return files.jsonable({"run": label, "workdir": f"/runs/{label}", "step": 0,
                         "model": analysis.describe(config), "dataset": ds.name,
                         **res.to_dict()})


@pytest.fixture(scope="module")
def probed():
  mlp, resmlp = embedded.get_config("tiny_mlp"), embedded.get_config("tiny_mlp")
  mlp.model.residual = False
  plain, resnet = embedded.get_config("tiny"), embedded.get_config("tiny")
  plain.model.plain = True
  invres = embedded.get_config("tiny")
  invres.model = ml_collections.ConfigDict(dict(
      name="invres", expansion=2, stem_width=8, head_width=16,
      stages=((8, 2, 1), (16, 1, 2)), bottleneck="linear", shortcut=True, activation="relu6"))
  configs = {"mlp": mlp, "resmlp": resmlp, "plain": plain, "resnet": resnet, "invres": invres}
  return {label: _probed(label, c) for label, c in configs.items()}


RUN_SETS = {"mlp": ["mlp"], "resmlp": ["resmlp"], "plain": ["plain"], "resnet": ["resnet"],
            "invres": ["invres"], "mlp_vs_resmlp": ["mlp", "resmlp"],
            "plain_vs_resnet": ["plain", "resnet"], "resnet_vs_invres": ["resnet", "invres"]}
PLOTS = {"units": analysis_plots.plot_units, "rank": analysis_plots.plot_rank,
         "gradients": analysis_plots.plot_gradients, "energy": analysis_plots.plot_energy}


@pytest.mark.parametrize("name", sorted(RUN_SETS))
def test_analysis_figures_name_the_runs_and_fill_their_panels(probed, name):
  runs = [probed[label] for label in RUN_SETS[name]]
  mlp_only = all(r["model"].startswith(("mlp", "residual-mlp")) for r in runs)
  for key, plot in PLOTS.items():
    fig = plot(runs)
    _check_layout(fig)
    texts, legends = _texts(fig), _legend_texts(fig)
    title = fig.get_suptitle() or " ".join(ax.get_title() for ax in fig.axes)
    for run in runs:
      assert run["model"] in title, (key, title)
      assert any(t.startswith(run["run"]) for t in legends), (key, run["run"], legends)
    # One naming of layers across figures: the probes' stage1/block0/... form.
    assert not any(re.search(r"stage\d+_block\d+", t) for t in texts), (key, texts)
    if key == "units":
      panel_c = any(ax.get_title(loc="left").startswith("(c)") for ax in fig.axes)
      has_linear = any((l["linear_frac"] or 0) > 0 or l["linear_frac_position"] > 0
                       for r in runs for l in r["layers"])
      assert panel_c == has_linear
      # Per position only for nets that have positions: for an MLP it is the per-input one.
      assert ("per (input, position)" in legends) == (panel_c and not mlp_only)
      if not has_linear:
        assert any(t.startswith("(c) linear-region fraction (C7) not drawn") for t in texts)
    if key == "energy" and any(r["run"] in ("mlp", "plain") for r in runs):
      assert any("no shortcuts" in t for t in legends)


def test_display_names_match_the_probe_names():
  assert layers.display_name("stage1_block0/conv1") == "stage1/block0/conv1"
  assert layers.display_name("stage2_block10/expand_conv") == "stage2/block10/expand_conv"
  assert layers.display_name("stem_conv") == "stem_conv"
  assert layers.display_name("stage1/block0/act1") == "stage1/block0/act1"


def test_write_redraws_from_probes_json(probed, tmp_path):
  runs = [probed["plain"], probed["resnet"]]
  written = analysis.write(str(tmp_path), runs)
  pngs = [p for p in written if p.endswith(".png")]
  assert len(pngs) == 4 and all(os.path.isfile(p[:-4] + ".pdf") for p in pngs)
  again = json.load(open(tmp_path / "probes.json"))["runs"]
  fig = analysis_plots.plot_units(again)
  _check_layout(fig)
  assert np.isfinite([l[k] for l in again[0]["layers"]
                      for k in ("participation_pre", "entropy_rank_pre")]).all()
