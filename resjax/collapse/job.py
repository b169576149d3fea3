"""The sweep as a job: check the config, lock the workdir, run, write one result set.

`run` writes collapse.csv, collapse.json and collapse.png (+ .pdf) and
reports what it does (the header, progress, timings, tables, the files
written) through `log`: absl logging by default; the launcher passes `print`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

from absl import logging

from resjax import files, locking, progress
from resjax.collapse import compiled, memory, reference, results
from resjax.collapse import spec as spec_lib
from resjax.plotting import collapse as collapse_plot

Log = Callable[[str], None]


def header(spec: spec_lib.SweepSpec) -> str:
  """The line that opens a run: the manifold, the axes and the number of cells."""
  return (f"collapse sweep: {spec.manifold} (d={','.join(map(str, spec.ds))}, "
          f"{spec.points} points) x {len(spec.activations)} activations x "
          f"n={spec.dims[0]}..{spec.dims[-1]} ({len(spec.dims)} dims) x {spec.seeds} seeds "
          f"= {spec.cells:,} cells, one compiled program")


def chunk_progress(spec: spec_lib.SweepSpec, log: Log) -> Callable[[int, int], None]:
  """A `sweep` progress callable: '  chunk 4/8  16384/32768 cells  6,047.3 cells/s  ETA 3s'."""
  chunk = [0, 0]  # The chunk just finished, of how many.
  reporter = progress.Progress(
      spec.cells, "cells", report=lambda line: log(f"  chunk {chunk[0]}/{chunk[1]}  {line}"))

  def on_chunk(done: int, chunks: int) -> None:
    chunk[:] = done, chunks
    reporter.update(done * spec.cells // chunks)

  return on_chunk


def run(config: Any, workdir: str, *, log: Log = logging.info) -> dict[str, Any]:
  """Runs the sweep and writes collapse.csv, collapse.json, collapse.png (+ .pdf) into `workdir`.

  The workdir is locked for the run (`locking.workdir_lock`), the memory the
  compiled call needs is checked first (`check_memory`), and the files are
  written as one set (`files.result_set`): a reader sees the earlier set or
  the new one, never a mix, and a failure keeps the earlier set. Returns
  {'rows': the summary rows, 'results': `sweep`'s arrays}.
  """
  spec = spec_lib.spec_from_config(config)
  fig_act, fig_dims = spec_lib.figure_of(config)
  memory.check_memory(spec)
  files.check_kind(files.workdir_path(workdir), "sweep")
  workdir = files.ensure_workdir(workdir)
  with locking.workdir_lock(workdir):
    return _run(config, spec, fig_act, fig_dims, workdir, log)


def _run(config: Any, spec: spec_lib.SweepSpec, fig_act: str, fig_dims: Sequence[int],
         workdir: str, log: Log) -> dict[str, Any]:
  log(header(spec))
  fig_act = collapse_plot.focus_activation(spec.activations, fig_act)  # The one it shows.
  # matplotlib's imports need no sweep result: a worker thread does them while
  # XLA runs the sweep, which releases the GIL. It starts once the program is
  # compiled: tracing holds the GIL, and sharing it cost a first run 0.7 s on
  # a 2-core CPU.
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    prepared = []
    try:
      res = compiled.sweep(spec, progress=chunk_progress(spec, log), on_compiled=lambda: (
          prepared.append(pool.submit(collapse_plot.preload))))
    except BaseException:
      for future in prepared:
        future.cancel()
      raise
    prepared[0].result()
  # The Fig. 1 panels read the sweep's first draw of T (drawing it again took
  # a compile: 0.5 s of a first run on a 2-core CPU).
  recoveries = (reference.figure_recoveries(spec, fig_act, fig_dims, constrained=False,
                                            t_NxD=res["first_draw"])
                if spec.manifold == "spiral" else None)
  chunks = -(-spec.draws // res["chunk"])
  again = (f"; {res['rerun_chunks']} of {chunks} chunks ran again with the QP solver"
           if res["rerun_chunks"] else "")
  log(f"  compiled in {res['compile_s']:.1f} s, ran in {res['run_s']:.1f} s{again}")
  rows = results.summarize(res)
  written = _write(workdir, config, spec, res, rows, recoveries)
  for name in dict.fromkeys(("relu",) + spec.activations[:1]):
    if name in spec.activations:
      log(results.table(rows, name, tuple(n for n in (1, 2, 3, 5, 15, 30, 64, spec.dims[-1])
                                          if n in spec.dims)))
  log("wrote " + "\n      ".join(written))
  return {"rows": rows, "results": res}


def _write(workdir: str, config: Any, spec: spec_lib.SweepSpec, res: dict[str, Any],
           rows: list[dict[str, Any]], recoveries: Optional[dict[str, Any]]) -> list[str]:
  """Writes the CSV, the JSON and the figure as one result set; returns the paths users see."""
  to_dict = getattr(config, "to_dict", None)
  with files.result_set(workdir) as new:
    files.write_kind(new, "sweep")  # In the set: a failed set leaves the workdir as it was.
    files.write_csv(os.path.join(new, "collapse.csv"), rows)
    files.write_json(os.path.join(new, "collapse.json"), {
        "config": to_dict() if to_dict else dict(config),
        "grid": dataclasses.asdict(spec),  # "grid": the file format's key, kept
        "timing": {"compile_s": res["compile_s"], "run_s": res["run_s"],
                   "rerun_chunks": res["rerun_chunks"]},
        "results": rows})
    fig = collapse_plot.collapse_figure(res, recoveries)
    figures = files.save_figure(fig, os.path.join(new, "collapse.png"))
  paths = [os.path.join(workdir, f"collapse.{ext}") for ext in ("csv", "json")]
  return paths + [os.path.join(workdir, os.path.basename(p)) for p in figures]
