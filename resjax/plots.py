"""Figures of the collapse sweep (matplotlib, no pyplot state: safe in any backend)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from matplotlib import collections as mcoll
from matplotlib import figure as mfigure
from matplotlib import ticker

from resjax import stats

_ERROR_STYLE = {"pinv": ("T$^+$ y, as in the paper (median)", "tab:gray"),
                "refit": ("best linear map of T$^+$ y", "tab:blue"),
                "oracle": ("oracle: invert the on-duty units", "tab:red")}
_ACT_COLORS = {"relu": "tab:red", "relu6": "tab:orange", "gelu": "tab:purple",
               "leaky_relu": "tab:brown", "elu": "tab:pink", "softplus": "tab:olive",
               "tanh": "tab:cyan", "identity": "black"}
_STYLES = {"relu": ("-", "o"), "relu6": ("--", "D"), "gelu": ("-", "^"),
           "leaky_relu": (":", "v"), "elu": ("-.", "s"), "softplus": ("-", "P"),
           "tanh": ("--", "X"), "identity": ("-", "*")}
_FLOOR = 1e-6  # log axes stop here; smaller errors are exact up to float32


def _log2_x(ax, dims) -> None:
  ax.set_xscale("log", base=2)
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.set_xlim(min(dims) * 0.9, max(dims) * 1.1)
  ax.grid(True, which="major", alpha=0.3)


def _band(ax, x, v_NxS, color, label, floor=None, **kw) -> None:
  """Mean over seeds as a line, its 95% interval as a band (on a log axis: where > floor)."""
  mean, lo, hi = stats.mean_ci(v_NxS)
  ax.plot(x, mean, color=color, label=label, **kw)
  if v_NxS.shape[-1] > 1:
    where = None if floor is None else lo > floor
    ax.fill_between(x, lo, hi, where=where, color=color, alpha=0.2, lw=0)


def _letter(ax, letter: str) -> None:
  ax.text(-0.02, 1.02, letter, transform=ax.transAxes, ha="right", va="bottom",
          fontsize=13, fontweight="bold")


def _curve(ax, x_Px2: np.ndarray, title: str, note: str = "") -> None:
  """A 2-D point sequence as a line coloured by position along the input curve."""
  pts = x_Px2.reshape(-1, 1, 2)
  segs = np.concatenate([pts[:-1], pts[1:]], axis=1)
  lc = mcoll.LineCollection(segs, cmap="viridis", linewidths=1.6)
  lc.set_array(np.linspace(0, 1, len(segs)))
  ax.add_collection(lc)
  lim = max(np.abs(x_Px2).max(), 1e-6) * 1.08
  ax.set_xlim(-lim, lim)
  ax.set_ylim(-lim, lim)
  ax.set_aspect("equal")
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=11)
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
  dims = res["dims"]
  for e, (label, color) in _ERROR_STYLE.items():
    v_NxS = np.maximum(res[f"{e}_error"][k, a], _FLOOR / 10)
    if e == "pinv":  # heavy-tailed: near-singular T at n ~ d make the mean meaningless
      ax.plot(dims, np.median(v_NxS, -1), color=color, label=label, lw=1.8)
    else:
      _band(ax, dims, v_NxS, color, label + " (mean)", floor=_FLOOR, lw=1.8)
  theory = res["oracle_error_theory"][k, a]
  if np.isfinite(theory).any():
    ax.plot(dims, np.maximum(theory, _FLOOR / 10), "k--", lw=1.2,
            label="oracle theory: $\\sum_{k<d}$ Bin$(k; n, \\frac{1}{2})(1 - k/d)$")
  ax.set_yscale("log")
  ax.set_ylim(_FLOOR, 10)
  _log2_x(ax, dims)
  ax.set_xlabel("embedding dimension n")
  ax.set_ylabel(r"relative error $\sum\|x-\hat x\|^2 / \sum\|x\|^2$")
  ax.set_title(f"{res['activations'][a]}: what comes back (mean, 95% CI)", fontsize=11)
  ax.legend(fontsize=8, loc="lower left")


def _refit_panel(ax, res, k: int) -> None:
  dims = res["dims"]
  for a, name in enumerate(res["activations"]):
    _band(ax, dims, res["refit_error"][k, a], _ACT_COLORS.get(name, None), name, lw=1.5,
          ls=_STYLES.get(name, ("-", "o"))[0])
  _log2_x(ax, dims)
  ax.set_ylim(bottom=0)
  ax.set_xlabel("embedding dimension n")
  ax.set_ylabel("refit relative error")
  ax.set_title("shape lost, by activation (mean, 95% CI)", fontsize=11)
  ax.legend(fontsize=8, ncol=2)


def _collapse_panel(ax, res, k: int) -> None:
  dims, names = res["dims"], res["activations"]
  d = int(res["d"][k])
  shown = [a for a, n in enumerate(names) if np.nanmax(res["collapsed_frac_theory"][k, a]
                                                       - (dims < d)) > 1e-6]
  for a in shown or range(len(names)):
    color = _ACT_COLORS.get(names[a])
    mean, lo, hi = stats.cluster_wilson(res["collapsed_frac"][k, a], res["points"])
    marker = _STYLES.get(names[a], ("-", "o"))[1]
    ax.errorbar(dims, mean, yerr=[mean - np.clip(lo, 0, 1), np.clip(hi, 0, 1) - mean],
                fmt=marker, ms=5 if marker == "D" else 3.5, color=color, elinewidth=1,
                capsize=0, mfc="none" if marker == "D" else color,
                label=f"{names[a]}: < {d} on duty (95% CI)")
    ax.plot(dims, res["collapsed_frac_theory"][k, a], "-", color=color, lw=1.2, alpha=0.8)
  if "relu" in names:
    a = names.index("relu")
    ax.plot(dims, res["dead_frac"][k, a].mean(-1), "s", ms=3, mfc="none", color="tab:red",
            label="relu: all silent")
    ax.plot(dims, 2.0 ** -dims, ":", color="tab:red", lw=1.2, label="$2^{-n}$")
  ax.plot([], [], "k-", lw=1.2, label=f"theory: P(Bin(n, p) < {d})")
  _log2_x(ax, dims)
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("embedding dimension n")
  ax.set_ylabel("fraction of points")
  ax.set_title("collapse odds: measured vs Binomial theory", fontsize=11)
  ax.legend(fontsize=8)


def _by_d_panels(fig, gs_row, res, a: int) -> None:
  """Manifold-dimension sweep: oracle error, refit error and collapse against n/d."""
  sub = gs_row.subgridspec(1, 3, wspace=0.28)
  axes = [fig.add_subplot(sub[i]) for i in range(3)]
  colors = [f"C{i}" for i in range(len(res["d"]))]
  for k, d in enumerate(res["d"]):
    ratio = res["dims"] / d
    _band(axes[0], ratio, np.maximum(res["oracle_error"][k, a], _FLOOR / 10), colors[k],
          f"d = {d}", floor=_FLOOR)
    axes[0].plot(ratio, np.maximum(res["oracle_error_theory"][k, a], _FLOOR / 10), "--",
                 color=colors[k], lw=1)
    _band(axes[1], ratio, res["refit_error"][k, a], colors[k], f"d = {d}")
    mean, lo, hi = stats.cluster_wilson(res["collapsed_frac"][k, a], res["points"])
    axes[2].errorbar(ratio, mean, yerr=[mean - np.clip(lo, 0, 1), np.clip(hi, 0, 1) - mean],
                     fmt="o", ms=3, color=colors[k], capsize=0, label=f"d = {d}")
    axes[2].plot(ratio, res["collapsed_frac_theory"][k, a], "-", color=colors[k], lw=1)
  name = res["activations"][a]
  titles = (f"{name}: oracle error (dashed: theory)", f"{name}: refit error",
            f"{name}: collapsed fraction (lines: theory)")
  for ax, title, letter in zip(axes, titles, "abc"):
    _letter(ax, letter)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("redundancy n / d")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8)
  axes[0].set_yscale("log")
  axes[0].set_ylim(_FLOOR, 2)
  axes[0].set_ylabel("relative error")
  axes[1].set_ylabel("relative error")
  axes[2].set_ylabel("fraction of points collapsed")


def collapse_figure(res: dict[str, Any], recoveries: Optional[dict[str, Any]] = None,
                    activation: str = "relu") -> mfigure.Figure:
  """The sweep's figure: Fig. 1 panels (spiral) above error and collapse curves."""
  names = res["activations"]
  a = names.index(activation) if activation in names else 0
  top = recoveries is not None
  fig = mfigure.Figure(figsize=(16, 8.9 if top else 5.2))
  gs = fig.add_gridspec(2 if top else 1, 1, height_ratios=[1, 1.6] if top else [1],
                        hspace=0.3, top=0.88 if top else 0.85)
  if top:
    _fig1_row(fig, gs[0], recoveries)
    fig.text(0.5, 0.895, f"MobileNetV2 Fig. 1 reproduced: T$^+$ {recoveries['activation']}"
             "(T x) for one Gaussian T (seed 0) per embedding dimension n", ha="center",
             fontsize=11, style="italic")
  if len(res["d"]) > 1:
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
  fig.suptitle(
      f"ReLU collapse: {res['manifold']} (d = {dims}, {res['points']} points) embedded by "
      f"Gaussian T into n dims, activated, recovered; {res['seeds']} seeds per point of each "
      "curve", fontsize=13)
  return fig
