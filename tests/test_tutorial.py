"""docs/tutorial.ipynb runs cell by cell in its quick setting, and is kept stripped."""
import json
import os
import pathlib
import re
import sys
import time

import nbclient
import nbformat

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "docs" / "tutorial.ipynb"
KERNEL = "resjax-tutorial"


def _kernel_spec(root: pathlib.Path) -> None:
  """A kernel spec that starts this interpreter (the one with resjax installed)."""
  spec = root / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "resjax tutorial", "language": "python"}))


def test_notebook_is_stripped():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_notebook_uses_public_names_only():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  assert not re.search(r"\b(collapse|train|checkpoints|probes|grid|resjax)\._\w", source)


def test_notebook_runs_quick(tmp_path, monkeypatch):
  _kernel_spec(tmp_path / "jupyter")
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("RESJAX_TUTORIAL_QUICK", "1")
  # One CPU device, as in a notebook on a laptop (conftest forces 8 for the other tests).
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", "")).strip()
  monkeypatch.setenv("XLA_FLAGS", flags)
  work = tmp_path / "work"
  work.mkdir()
  nb = nbformat.read(NOTEBOOK, as_version=4)
  start = time.perf_counter()
  # A failing cell raises CellExecutionError (with its traceback) and fails the test.
  nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                          resources={"metadata": {"path": str(work)}}).execute()
  print(f"tutorial (quick) ran in {time.perf_counter() - start:.1f} s")
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 2  # the collapse figure and the dead-units plot
  text = "".join(o.get("text", "") for o in outputs)
  assert "quick=True" in text and "model.residual=True" in text
  assert (work / "tutorial_runs" / "quick" / "collapse" / "collapse.png").is_file()
  assert (work / "tutorial_runs" / "quick" / "spirals_grid" / "conditions.csv").is_file()
