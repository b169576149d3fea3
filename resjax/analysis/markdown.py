"""report.md: the figures and, in numbers, what they show per claim (C4, C5, C7, C3).

`report_markdown(runs)` joins one section per claim, the per-layer tables and
the definitions; every number comes from the runs alone (probes.json), so the
report can be regenerated without restoring anything.
"""
from __future__ import annotations

from typing import Sequence

from resjax.analysis.tables import claim_numbers, fmt
from resjax.plotting.layers import alignment_note, split_of, title

# The figures report.md shows, by key (written beside it by `analysis.write`).
FIGURES = {
    "units": "units.png",
    "rank": "effective_rank.png",
    "gradients": "gradients.png",
    "energy": "energy.png",
    "trajectories": "trajectories.png",
}


def _compare_sentence(runs: Sequence[dict], numbers: dict, key: str, what: str,
                      digits: int = 1, unit: str = "") -> str:
  parts = [f"{r['run']} {fmt(numbers[r['run']].get(key), digits)}{unit}" for r in runs]
  return f"{what}: " + ", ".join(parts) + "."


def _batch_norm_sentence(runs: Sequence[dict]) -> str:
  """Which BatchNorm statistics each probe used, from the runs' summaries."""
  with_bn = [r["run"] for r in runs if r["summary"].get("batch_norm")]
  if not any("batch_norm" in r["summary"] for r in runs):
    return "BatchNorm mode: not recorded (probes.json of an earlier release)."
  if not with_bn:
    return "No run has BatchNorm layers."
  sizes = sorted({r["summary"].get("grad_batch_size") for r in runs
                  if r["summary"].get("grad_batch_size")})
  grad = (f"the gradient norms run it in training mode, on the statistics of each gradient "
          f"batch of {'/'.join(map(str, sizes))} examples, as the optimizer saw it"
          if sizes else "no gradient norms were taken")
  which = "" if len(with_bn) == len(runs) else f" ({', '.join(with_bn)})"
  return ("BatchNorm" + which + ": every activation statistic (dead, dormant, active and "
          "linear-region fractions, ranks, block energy) runs the net in eval mode, on its "
          "running averages, so each input is probed on its own as the trained net "
          f"classifies it; {grad}.")


def _header(runs: Sequence[dict], command: str | None, split: str) -> list[str]:
  """The title, the command, the runs and what the numbers are computed on."""
  md = [f"# Probes: {title(runs)}", ""]
  if command:
    md += ["Regenerate with:", "", "```bash", command, "```", ""]
  md += [f"| run | model | workdir | step | {split} examples | accuracy | loss |",
         "|---|---|---|---|---|---|---|"]
  for r in runs:
    s = r["summary"]
    md.append(f"| {r['run']} | {r['model']} | `{r['workdir']}` | {r['step']} | "
              f"{s['examples']} | {fmt(s['accuracy'])} | {fmt(s['loss'])} |")
  md += ["", f"All numbers below are computed over the whole {split} split, without "
         "augmentation, and appear in `probes.csv` (one row per layer and run).", ""]
  md += [_batch_norm_sentence(runs), ""]
  note = alignment_note(runs)
  if note:
    md += [f"The figures align {note}: each layer sits on its own tick.", ""]
  return md


def _c4(runs: Sequence[dict], num: dict, threshold: float) -> list[str]:
  """C4: dead and dormant units, gradient norms; plain vs residual."""
  residual = [r for r in runs if num[r["run"]]["shortcut_blocks"] > 0]
  plain = [r for r in runs if num[r["run"]]["shortcut_blocks"] == 0]
  md = ["## C4: dead units stop learning; gradients vanish in plain nets", ""]
  for r in runs:
    c = num[r["run"]]
    worst = (f"the worst layer is `{c['worst_layer']}` with dead fraction "
             f"{c['worst_dead_frac']:.4f}" if c["dead"] else "no layer has a dead unit")
    line = (f"- **{r['run']}** ({r['model']}): {c['dead']} of {c['units']} units dead "
            f"({c['dead_pct']:.2f}%) across {c['layers']} activation layers; {worst}. "
            f"Dormant (ReDo score <= {threshold:g}): {c['dormant']} units "
            f"({c['dormant_pct']:.2f}%).")
    if "grad_ratio" in c:
      line += (f" Gradient norm: first weight layer {c['grad_first']:.4g}, last "
               f"{c['grad_last']:.4g} (ratio {fmt(c['grad_ratio'], 4)}); across layers it "
               f"spans {fmt(c['grad_spread'], 2)} orders of magnitude.")
    md.append(line)
  if plain and residual:
    p, q = plain[0]["run"], residual[0]["run"]
    dp, dq = num[p]["dead"], num[q]["dead"]
    if dp > dq:
      verdict = f"{p} has more dead units than {q} ({dp} vs {dq}), as C4/C5 predict"
    elif dp == dq:
      verdict = f"{p} and {q} have the same number of dead units ({dp}); no separation here"
    else:
      verdict = f"{p} has fewer dead units than {q} ({dp} vs {dq}), against the C4/C5 prediction"
    md.append(f"- Plain vs residual: {verdict}.")
    rp, rq = num[p].get("grad_ratio"), num[q].get("grad_ratio")
    if rp is not None and rq is not None:
      smaller = "smaller" if rp < rq else "not smaller"
      md.append(f"- Gradient reaching the first layer relative to the last (first/last norm "
                f"ratio): {rp:.4f} in {p} vs {rq:.4f} in {q}, {smaller} in the plain net; "
                f"vanishing gradients in plain nets (C4) predict smaller.")
  md += ["", f"![units]({FIGURES['units']})", ""]
  if any(r["weights"] for r in runs):
    md += [f"![gradients]({FIGURES['gradients']})", ""]
  return md


def _c5(runs: Sequence[dict], num: dict, split: str) -> list[str]:
  """C5: the shortcut's share of the block energy; the runs side by side."""
  md = ["## C5: the shortcut carries the signal linearly", ""]
  for r in runs:
    c = num[r["run"]]
    if c["shortcut_blocks"]:
      md.append(f"- **{r['run']}**: in {c['shortcut_blocks']} of {c['blocks']} blocks the "
                f"shortcut carries on average {100 * c['shortcut_frac']:.1f}% of the block "
                f"energy (branch {100 * (1 - c['shortcut_frac']):.1f}%).")
    else:
      md.append(f"- **{r['run']}**: no shortcuts; the branch carries 100% of every block's "
                f"output ({c['blocks']} blocks).")
  if len(runs) > 1:
    md.append("- " + _compare_sentence(runs, num, "accuracy",
                                       f"Accuracy on the {split} split", 4))
    md.append("- " + _compare_sentence(runs, num, "dead_pct", "Dead units", 2, "%"))
    if all("grad_ratio" in num[r["run"]] for r in runs):
      md.append("- " + _compare_sentence(runs, num, "grad_ratio",
                                         "First/last layer gradient-norm ratio", 4))
  md.append("")
  if any(r["blocks"] for r in runs):
    md += [f"![energy]({FIGURES['energy']})", ""]
  return md


def _c7(runs: Sequence[dict], num: dict) -> list[str]:
  """C7: linear-region fractions and the share of neurons on duty."""
  md = ["## C7: a layer that lets everything through acts linearly", ""]
  for r in runs:
    c = num[r["run"]]
    conv = any(l.get("positions", 1) > 1 for l in r["layers"])
    unit = "(input, position) pairs" if conv else "inputs"
    if c["linear_layers"]:
      best = (f"{c['linear_layers']} of {c['layers']} layers pass every unit for some "
              f"{unit}; the highest linear-region fraction is {c['linear_max']:.4f} "
              f"(`{c['linear_max_layer']}`)")
    else:
      best = (f"none of the {c['layers']} layers passes every unit for any of its {unit} "
              f"(linear-region fraction 0)")
    line = f"- **{r['run']}**: {best}."
    if conv:
      whole = max((l.get("linear_frac_input") or 0.0) for l in r["layers"])
      line += (f" For conv layers the fraction is per (input, position), all channels on "
               f"duty at a position ({100 * c['linear_position_mean']:.2f}% of the pairs on "
               f"average over layers); every unit at every position at once is ~0 by "
               f"construction (highest over layers {whole:.4f}).")
    line += (f" A typical input turns on {100 * c['active_mean']:.1f}% of a layer's neurons "
             f"(spread across inputs: mean std {c['active_std']:.4f}).")
    md.append(line)
  md += ["", "See panel (c) of the units figure above.", ""]
  return md


def _c3(runs: Sequence[dict], num: dict) -> list[str]:
  """C3: effective rank before and after the activation, and retention."""
  md = ["## C3: redundancy decides what the activation destroys", ""]
  for r in runs:
    c = num[r["run"]]
    corr = lambda v: "n/a (fewer than 3 layers)" if v is None else f"{v:.3f}"  # noqa: E731
    md.append(f"- **{r['run']}**: mean participation ratio {c['participation_pre']:.2f} "
              f"before and {c['participation_post']:.2f} after the activation (mean "
              f"retention, after / before, {fmt(c['retention'], 3)}); mean entropy effective "
              f"rank {c['entropy_rank_pre']:.2f} before and {c['entropy_rank_post']:.2f} "
              f"after (retention {fmt(c['retention_entropy'], 3)}). Spearman correlation "
              f"across layers between redundancy (units / rank before) and retention: "
              f"{corr(c['rank_corr'])} (participation ratio), "
              f"{corr(c['rank_corr_entropy'])} (entropy rank); C3 predicts it positive.")
  md += ["", f"![effective rank]({FIGURES['rank']})", ""]
  return md


def _per_layer(runs: Sequence[dict]) -> list[str]:
  """One table per run: layers, blocks and weight layers."""
  md = ["## Per-layer numbers", ""]
  for r in runs:
    md += [f"### {r['run']} ({r['model']})", "",
           "| layer | units | dead | dead frac | dormant frac | active mean | active 2.5% | "
           "active 97.5% | linear frac | PR pre | PR post | erank pre | erank post |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for l in r["layers"]:
      md.append(f"| {l['layer']} | {l['units']} | {l['dead']} | {fmt(l['dead_frac'])} | "
                f"{fmt(l['dormant_frac'])} | {fmt(l['active_mean'])} | "
                f"{fmt(l['active_p025'])} | {fmt(l['active_p975'])} | "
                f"{fmt(l['linear_frac'])} | {fmt(l['participation_pre'])} | "
                f"{fmt(l['participation_post'])} | {fmt(l['entropy_rank_pre'])} | "
                f"{fmt(l['entropy_rank_post'])} |")
    if r["blocks"]:
      md += ["", "| block | shortcut frac | cosine(s, b) |", "|---|---|---|"]
      for b in r["blocks"]:
        md.append(f"| {b['block']} | {fmt(b['shortcut_frac'])} | {fmt(b['cosine'])} |")
    if r["weights"]:
      md += ["", "| weight layer | grad norm | 95% low | 95% high | param norm |",
             "|---|---|---|---|---|"]
      for w in r["weights"]:
        g = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731  (None: one batch)
        md.append(f"| {w['layer']} | {g(w['grad_norm'])} | {g(w['grad_norm_lo'])} | "
                  f"{g(w['grad_norm_hi'])} | {g(w['param_norm'])} |")
    md.append("")
  return md


def _definitions(threshold: float, split: str) -> list[str]:
  """What each measured quantity means."""
  md = ["## Definitions", "",
         "- *dead*: a unit (a channel for convolutions) whose pre-activation is outside "
         "the activation's invertible region (for ReLU: <= 0) for every input and every "
         "spatial position.",
         f"- *dormant* (ReDo): mean |activation| of a unit / mean over the layer's units "
         f"<= {threshold:g}.",
         "- *active fraction*: per input, the share of the layer's neurons (positions x "
         "channels) that are on duty. *Linear-region fraction*: the share of samples on "
         "which all of them are, a sample being an input for dense layers and an (input, "
         "position) pair, all channels on duty, for conv layers (`linear_frac`; per input "
         "for every layer: `linear_frac_input`, per pair: `linear_frac_position`).",
         "- *PR* (participation ratio): (sum of eigenvalues)^2 / sum of squared eigenvalues "
         "of the channel covariance, spatial positions pooled as samples; *erank* (entropy "
         "effective rank, Roy & Vetterli 2007): exp of the Shannon entropy of the "
         "eigenvalues divided by their sum. Both are k for k equal eigenvalues; PR <= erank.",
         f"- *shortcut share*: sum ||s||^2 / (sum ||s||^2 + sum ||b||^2) over the {split} "
         "inputs, for block output s + b.",
         "- *gradient norm*: ||dL/dW|| of each conv/dense kernel for the mean cross-entropy "
         "of a batch from the start of the split, BatchNorm (if any) in training mode; "
         "geometric mean and 95% t-interval over batches.", ""]
  return md


def report_markdown(runs: Sequence[dict], command: str | None = None,
                    trajectories: bool = False) -> str:
  """report.md: the figures and what they show about C4, C5, C7 and C3, in numbers
  (and the figure of the probes during training, when the runs took them)."""
  num = {r["run"]: claim_numbers(r) for r in runs}
  threshold = runs[0]["summary"]["dormant_threshold"]
  split = "/".join(sorted({split_of(r) for r in runs}))
  md = (_header(runs, command, split) + _c4(runs, num, threshold) + _c5(runs, num, split)
        + _c7(runs, num) + _c3(runs, num) + _per_layer(runs))
  if trajectories:
    md += ["## During training", "",
           "Every activation layer probed during training (`train.probe_every`, on a fixed "
           "batch of the training split): up to six layers per condition, the mean over "
           "its seeds and the 95% t-interval; every layer and number is in "
           "trajectories.csv and each run's probes.jsonl.", "",
           f"![trajectories]({FIGURES['trajectories']})", ""]
  return "\n".join(md + _definitions(threshold, split))
