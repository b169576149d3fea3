"""The collapse sweep's figure, drawn from `collapse.sweep`'s arrays (no pyplot state).

matplotlib is imported inside the drawing functions (a slow import that
`resjax.collapse` should not pay unless it draws). The figure keeps its own
sizes and colours rather than `style.RC`, which would redraw it differently.
This module reads result arrays only: it never imports `resjax.collapse`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from resjax import activations, stats

if TYPE_CHECKING:
  from matplotlib import figure as mfigure

_ERROR_STYLE = {"pinv": ("T⁺ y, as in the paper (median)", "tab:gray", "-"),
                "refit": ("best linear map of T⁺ y", "tab:blue", "-"),
                "span": ("span decoder: least squares on the units on duty", "tab:red", "-"),
                "constrained": ("constrained decoder: + silent units' constraints",
                                "tab:green", "--")}
_ACT_COLORS = {"relu": "tab:red", "relu6": "tab:orange", "gelu": "tab:purple",
               "leaky_relu": "tab:brown", "elu": "tab:pink", "softplus": "tab:olive",
               "tanh": "tab:cyan", "identity": "black"}
_STYLES = {"relu": ("-", "o"), "relu6": ("--", "D"), "gelu": ("-", "^"),
           "leaky_relu": (":", "v"), "elu": ("-.", "s"), "softplus": ("-", "P"),
           "tanh": ("--", "X"), "identity": ("-", "*")}
_FLOOR = 1e-6  # log axes stop here; smaller errors are exact up to float32
# Titles of panels whose top edge nothing can cover (no top ticks, no offset
# text: log axes, fixed limits, no ticks) sit at this height. Left to
# matplotlib, each draw measures every y axis to place them (0.15 s of this
# figure's saving). The refit panels (a linear axis, free limits) keep that.
_TITLE_Y = 1.0
_CURVE_BANDS = 48  # colours along a Fig. 1 curve


def focus_activation(names: tuple[str, ...], *wanted: Optional[str]) -> str:
  """The activation whose detail panels are drawn: the first wanted one that was swept,
  else relu, else the first swept activation that is not the identity."""
  for name in (*wanted, "relu"):
    if name in names:
      return name
  return next((n for n in names if n != "identity"), names[0])


def _duty_p(name: str) -> Optional[str]:
  """Odds that a unit with a Gaussian pre-activation is on duty, as text, where the
  span decoder's theory holds (sign-symmetric regions); None elsewhere."""
  lo, hi = activations.get(name).region
  if hi != np.inf:
    return None
  return {0.0: "½", -np.inf: "1"}.get(lo)


def _title_acts(names: tuple[str, ...]) -> str:
  if len(names) == len(activations.names()):
    return f"all {len(names)} activations"
  return ", ".join(names)


def _log2_x(ax, dims) -> None:
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top  (slow import)
  ax.set_xscale("log", base=2)
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.set_xlim(min(dims) * 0.9, max(dims) * 1.1)
  ax.grid(True, which="major", alpha=0.3)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _power_of_ten(v: float, _=None) -> str:
  """'10⁻³' at a power of ten, '' elsewhere: plain text, where matplotlib's own
  log labels are mathtext, parsed once per label and resolution."""
  e = int(np.round(np.log10(v))) if v > 0 else 0
  return f"10{str(e).translate(_SUPERSCRIPT)}" if v > 0 and np.isclose(v, 10.0**e) else ""


def _log10_y(ax, top: float) -> None:
  """A log y axis from _FLOOR to `top`, its decades labelled by `_power_of_ten`.

  Minor ticks at 2 and 5 times each decade, not 2..9: 18 tick objects
  instead of 72, which matplotlib builds and draws once per file (the
  figure's save took 0.1-0.2 s less).
  """
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top  (slow import)
  ax.set_yscale("log")
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(_power_of_ten))
  ax.yaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
  ax.set_ylim(_FLOOR, top)


def _band(ax, x, v_NxS, color, label, floor=None, **kw) -> None:
  """Mean over seeds as a line, its 95% interval as a band.

  On a log axis (`floor` given) the band's lower bound is clipped to the floor,
  so an interval that reaches 0 runs down to the axis instead of breaking off.
  """
  mean, lo, hi = stats.mean_ci(v_NxS)
  ax.plot(x, mean, color=color, label=label, **kw)
  if v_NxS.shape[-1] > 1:
    if floor is not None:
      lo, hi = np.maximum(lo, floor), np.maximum(hi, floor)
    ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def _letter(ax, letter: str) -> None:
  ax.text(-0.02, 1.02, letter, transform=ax.transAxes, ha="right", va="bottom",
          fontsize=13, fontweight="bold")


def _curve(ax, x_Px2: np.ndarray, title: str, note: str = "") -> None:
  """A 2-D point sequence as a line coloured by position along the input curve."""
  from matplotlib import collections as mcoll  # pylint: disable=g-import-not-at-top
  # _CURVE_BANDS polylines, each one colour, sharing their end points: vector
  # paths in the PDF, drawn faster than a segment per point pair (about 6,000
  # in the figure), which had to be rasterized there.
  cuts = np.linspace(0, len(x_Px2) - 1, min(_CURVE_BANDS, len(x_Px2) - 1) + 1).round().astype(int)
  bands = [x_Px2[a:b + 1] for a, b in zip(cuts[:-1], cuts[1:])]
  lc = mcoll.LineCollection(bands, cmap="viridis", linewidths=1.6, capstyle="round",
                            joinstyle="round")
  lc.set_array(np.linspace(0, 1, len(bands)))
  ax.add_collection(lc)
  lim = max(np.abs(x_Px2).max(), 1e-6) * 1.08
  ax.set_xlim(-lim, lim)
  ax.set_ylim(-lim, lim)
  ax.set_aspect("equal")
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=11, y=_TITLE_Y)
  if note:
    ax.text(0.5, -0.04, note, transform=ax.transAxes, ha="center", va="top", fontsize=9)


def _fig1_row(fig, gs_row, rec: dict[str, Any]) -> None:
  """Input spiral and its T^+ act(T x) recoveries: MobileNetV2 Fig. 1."""
  panels = rec["panels"]
  sub = gs_row.subgridspec(1, len(panels) + 1, wspace=0.08)
  ax = fig.add_subplot(sub[0])
  _curve(ax, rec["x"], "input", "colour: position along the spiral")
  _letter(ax, "a")
  for i, p in enumerate(panels):
    _curve(fig.add_subplot(sub[i + 1]), p["pinv"], f"n = {p['n']}",
           f"refit error {p['refit_error']:.2f}")


def _errors_panel(ax, res, k: int, a: int) -> None:
  dims, name = res["dims"], res["activations"][a]
  for e, (label, color, ls) in _ERROR_STYLE.items():
    v_NxS = np.maximum(res[f"{e}_error"][k, a], _FLOOR / 10)
    if e == "pinv":  # heavy-tailed: near-singular T at n ~ d make the mean meaningless
      ax.plot(dims, np.median(v_NxS, -1), color=color, label=label, lw=1.8, ls=ls)
    else:
      _band(ax, dims, v_NxS, color, label + " (mean)", floor=_FLOOR, lw=1.8, ls=ls)
  theory = res["span_error_theory"][k, a]
  p = _duty_p(name)
  if np.isfinite(theory).any() and p is not None:
    ax.plot(dims, np.maximum(theory, _FLOOR / 10), "k:", lw=1.4, zorder=4,
            label=f"span theory: Σ Bin(k; n, {p}) (1 − k/d) over k < d")
  _log10_y(ax, 10)
  _log2_x(ax, dims)
  ax.set_xlabel("embedding dimension n")
  ax.set_ylabel("relative error Σ‖x − x̂‖² / Σ‖x‖²")
  ax.set_title(f"{name}: what comes back (mean, 95% CI)", fontsize=11, y=_TITLE_Y)
  # Below the axes: inside, it would cover the curves wherever they fall.
  ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)


def _marker_indices(dims, slot: int, slots: int, per_octave: int = 2) -> list[int]:
  """Indices of `dims` for markers: about `per_octave` per doubling of n, staggered by
  `slot` of `slots`, so curves that lie on top of each other show distinct markers."""
  logs = np.log2(np.asarray(dims, np.float64))
  step = 1.0 / per_octave
  targets = logs.min() + step * (slot / max(slots, 1)) + step * np.arange(
      int((logs.max() - logs.min()) / step) + 1)
  return sorted({int(np.argmin(np.abs(logs - t))) for t in targets})


def _overlapping(res, k: int, tol: float = 0.01) -> list[list[str]]:
  """Groups of activations whose mean refit curves differ by less than `tol` everywhere."""
  names = res["activations"]
  mean_AxN = res["refit_error"][k].mean(-1)
  groups: list[list[int]] = []
  for a in range(len(names)):
    for g in groups:
      if np.nanmax(np.abs(mean_AxN[a] - mean_AxN[g[0]])) < tol:
        g.append(a)
        break
    else:
      groups.append([a])
  return [[names[a] for a in g] for g in groups if len(g) > 1]


def _refit_panel(ax, res, k: int) -> None:
  dims, names = res["dims"], res["activations"]
  groups = _overlapping(res, k)
  for a, name in enumerate(names):
    ls, marker = _STYLES.get(name, ("-", "o"))
    color = _ACT_COLORS.get(name, f"C{a}")
    # Curves that lie on top of each other get staggered markers to tell them apart.
    group = next((g for g in groups if name in g), None)
    marks = (dict(marker=marker, ms=4.5, mfc="white", mew=1.1,
                  markevery=_marker_indices(dims, group.index(name), len(group)))
             if group else {})
    _band(ax, dims, res["refit_error"][k, a], color, None, lw=1.5, ls=ls, **marks)
    ax.plot([], [], ls=ls, color=color, lw=1.5, label=name,
            **{k_: v for k_, v in marks.items() if k_ != "markevery"})
  if groups:
    ax.text(0.98, 0.62, "\n".join(" ≈ ".join(g) + " (curves overlap)"
                                  for g in groups),
            transform=ax.transAxes, ha="right", va="top", fontsize=8, color="0.25")
  _log2_x(ax, dims)
  ax.set_ylim(bottom=0)
  ax.set_xlabel("embedding dimension n")
  ax.set_ylabel("refit relative error")
  ax.set_title("shape lost, by activation (mean, 95% CI)", fontsize=11)
  ax.legend(fontsize=8, ncol=2, loc="upper right")


def _collapse_panel(ax, res, k: int) -> None:
  dims, names = res["dims"], res["activations"]
  d = int(res["d"][k])
  shown = [a for a, n in enumerate(names) if np.nanmax(res["collapsed_frac_theory"][k, a]
                                                       - (dims < d)) > 1e-6]
  drawn = list(shown or range(len(names)))
  for slot, a in enumerate(drawn):
    color = _ACT_COLORS.get(names[a], f"C{a}")
    # Every n up to ~8, then a few per doubling, staggered: dense tails would hide the theory.
    idx = _marker_indices(dims, slot, len(drawn), per_octave=4)
    mean, lo, hi = stats.cluster_wilson(res["collapsed_frac"][k, a][idx], res["points"])
    marker = _STYLES.get(names[a], ("-", "o"))[1]
    hollow = marker == "D"
    ax.errorbar(dims[idx], mean, yerr=[mean - np.clip(lo, 0, 1), np.clip(hi, 0, 1) - mean],
                fmt=marker, ms=5 if hollow else 3.5, color=color, elinewidth=1, capsize=0,
                mfc="none" if hollow else color, alpha=0.8, zorder=2,
                label=f"{names[a]}: < {d} on duty (95% CI)")
    # Theory in black on top of the points it predicts.
    ax.plot(dims, res["collapsed_frac_theory"][k, a], "-", color="black", lw=1.1, zorder=5)
  if "relu" in names:
    a = names.index("relu")
    ax.plot(dims, res["dead_frac"][k, a].mean(-1), "s", ms=3.5, mfc="none", color="tab:red",
            zorder=2, label="relu: all silent")
    ax.plot(dims, 2.0 ** -dims, ":", color="black", lw=1.3, zorder=5,
            label="theory: 2⁻ⁿ (all silent)")
  drawn = [names[a] for a in drawn]
  ps = {_duty_p(n) for n in drawn}
  if ps == {"½"}:
    label = f"theory: P(Bin(n, 1/2) < {d})"
  elif ps == {"1"}:  # on duty everywhere: collapsed exactly when n < d
    label = f"theory: P(Bin(n, 1) < {d}) = [n < {d}]"
  else:
    label = f"theory: P(Bin(n, p) < {d})" + (", p = 1/2 for relu" if "relu" in drawn else "")
  ax.plot([], [], "k-", lw=1.1, label=label)
  _log2_x(ax, dims)
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("embedding dimension n")
  ax.set_ylabel("fraction of points")
  ax.set_title("collapse odds: measured vs Binomial theory", fontsize=11, y=_TITLE_Y)
  ax.legend(fontsize=8, loc="upper right")


def _by_d_panels(fig, gs_row, res, a: int) -> None:
  """Manifold-dimension sweep: decoder errors, refit error and collapse against n/d."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top  (slow import)
  sub = gs_row.subgridspec(1, 3, wspace=0.28)
  axes = [fig.add_subplot(sub[i]) for i in range(3)]
  colors = [f"C{i}" for i in range(len(res["d"]))]
  for k, d in enumerate(res["d"]):
    ratio = res["dims"] / d
    _band(axes[0], ratio, np.maximum(res["span_error"][k, a], _FLOOR / 10), colors[k],
          f"d = {d}", floor=_FLOOR)
    _band(axes[0], ratio, np.maximum(res["constrained_error"][k, a], _FLOOR / 10), colors[k],
          None, floor=_FLOOR, ls="-.", lw=1)
    axes[0].plot(ratio, np.maximum(res["span_error_theory"][k, a], _FLOOR / 10), ":",
                 color=colors[k], lw=1.2)
    _band(axes[1], ratio, res["refit_error"][k, a], colors[k], f"d = {d}")
    # Measurements as markers (a few per doubling of n), theory as dashed lines.
    # Only n >= d: below it every point collapses, as the theory says.
    idx = [i for i in _marker_indices(res["dims"], k, len(res["d"])) if res["dims"][i] >= d]
    mean, lo, hi = stats.cluster_wilson(res["collapsed_frac"][k, a][idx], res["points"])
    axes[2].errorbar(ratio[idx], mean,
                     yerr=[mean - np.clip(lo, 0, 1), np.clip(hi, 0, 1) - mean],
                     fmt="o", ms=3.5, mfc="white", mew=1, color=colors[k], elinewidth=0.8,
                     capsize=0, zorder=3, label=f"d = {d}")
    axes[2].plot(ratio, res["collapsed_frac_theory"][k, a], "--", color=colors[k], lw=1,
                 zorder=2)
  name = res["activations"][a]
  titles = (f"{name}: span (solid; dotted: theory), constrained (dash-dot)",
            f"{name}: refit error",
            f"{name}: collapsed fraction (dashed: theory)")
  for ax, title, letter in zip(axes, titles, "abc"):
    _letter(ax, letter)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("redundancy n / d")
    ax.set_title(title, fontsize=11, y=None if ax is axes[1] else _TITLE_Y)
    ax.legend(fontsize=8)
  _log10_y(axes[0], 2)
  axes[0].set_ylabel("relative error")
  axes[1].set_ylabel("relative error")
  axes[2].set_ylabel("fraction of points collapsed")
  axes[2].set_ylim(-0.02, 1.02)


def preload() -> None:
  """Imports what `collapse_figure` and `files.save_figure` draw with (about 0.3 s), e.g.
  on a worker thread while the sweep runs."""
  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
  from matplotlib import collections, figure, image, ticker  # noqa: F401
  from matplotlib.backends import backend_agg, backend_pdf  # noqa: F401


def collapse_figure(res: dict[str, Any], recoveries: Optional[dict[str, Any]] = None,
                    activation: Optional[str] = None) -> "mfigure.Figure":
  """The sweep's figure: Fig. 1 panels (spiral) above error and collapse curves.

  The detail panels (the Fig. 1 row, the errors of one activation) show
  `activation`, else the activation of `recoveries`, if swept; otherwise relu,
  or the first swept activation other than the identity (`focus_activation`);
  `recoveries` must be of that activation (ValueError otherwise).
  """
  from matplotlib import figure as mfigure  # pylint: disable=g-import-not-at-top
  names = tuple(res["activations"])
  wanted = recoveries["activation"] if recoveries is not None else None
  focus = focus_activation(names, activation, wanted)
  a = names.index(focus)
  if recoveries is not None and recoveries["activation"] != focus:
    raise ValueError(f"recoveries of {recoveries['activation']!r}, but the figure shows "
                     f"{focus!r}; pass collapse.figure_recoveries(grid, {focus!r}, dims)")
  top = recoveries is not None
  by_d = len(res["d"]) > 1
  fig = mfigure.Figure(figsize=(16, 9.6 if top else (5.2 if by_d else 5.9)))
  gs = fig.add_gridspec(2 if top else 1, 1, height_ratios=[1, 1.6] if top else [1],
                        hspace=0.3, top=0.88 if top else 0.85,
                        bottom=0.12 if by_d else (0.17 if top else 0.27))
  if top:
    _fig1_row(fig, gs[0], recoveries)
    fig.text(0.5, 0.895, f"MobileNetV2 Fig. 1 reproduced: T⁺ {recoveries['activation']}"
             "(T x) for one Gaussian T (seed 0) per embedding dimension n", ha="center",
             fontsize=11, style="italic")
  if by_d:
    _by_d_panels(fig, gs[-1], res, a)
  else:
    sub = gs[-1].subgridspec(1, 3, wspace=0.28)
    axes = [fig.add_subplot(sub[i]) for i in range(3)]
    _errors_panel(axes[0], res, 0, a)
    _refit_panel(axes[1], res, 0)
    _collapse_panel(axes[2], res, 0)
    for ax, letter in zip(axes, "bcd" if top else "abc"):
      _letter(ax, letter)
  dims = ", ".join(map(str, res["d"]))
  lead = "ReLU collapse" if "relu" in names else "Collapse"
  fig.suptitle(
      f"{lead} ({_title_acts(names)}): {res['manifold']} (d = {dims}, {res['points']} points) "
      f"embedded by Gaussian T into n dims, activated, recovered; {res['seeds']} seeds per "
      "point of each curve", fontsize=13)
  return fig
