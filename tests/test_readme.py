"""The README's tour shows what its commands print: each is run as written (its
`runs/` in a temporary directory), and every output line the README shows must
be a line the command printed."""
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT, subprocess_env

SECTIONS = ("1. Sweep", "2. Train", "3. Grid", "4. Analyze", "5. Study")


def _tour() -> dict[str, tuple[list[str], list[str]]]:
  """Section title -> (its commands, the output lines the README shows)."""
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  out = {}
  for part in re.split(r"^(?=##+ )", text, flags=re.M):  # A section ends at the next heading.
    if not part.startswith("### "):
      continue
    title = part.splitlines()[0][4:]
    blocks = re.findall(r"```(\w*)\n(.*?)```", part, flags=re.S)
    commands = [c for lang, body in blocks if lang == "bash"
                for c in body.replace("\\\n", " ").splitlines() if c.startswith("python -m")]
    shown = [l for lang, body in blocks if lang == "" for l in body.splitlines() if l.strip()]
    out[title] = (commands, shown)
  return out


def _readme_machine() -> bool:
  """Whether this is the kind of processor the README's outputs were printed on
  (an Intel Xeon with AVX-512): other instruction sets may round differently,
  and a chaotic plain net may then end elsewhere."""
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return False
  return "Intel(R) Xeon(R)" in info and " avx512f" in info


@pytest.mark.slow
def test_the_tour_prints_what_the_readme_shows(tmp_path):
  if not _readme_machine():
    pytest.skip("the README's outputs were printed on an Intel Xeon with AVX-512")
  tour = _tour()
  # As a user runs them: the host devices the launchers choose, their default cache.
  env = subprocess_env(tmp_path / "jax-cache", devices=None,
                       XDG_CACHE_HOME=str(tmp_path / "cache"))
  printed = {}
  for section in SECTIONS:
    (title,) = [t for t in tour if t.startswith(section)]
    commands, shown = tour[title]
    assert commands and shown, title
    lines = []
    for command in commands:
      args = command.replace("runs/", f"{tmp_path}/runs/").split()
      proc = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
      assert proc.returncode == 0, (command, proc.stderr[-2000:])
      lines += [re.sub(r"\s+", " ", l.replace(f"{tmp_path}/runs/", "runs/")).strip()
                for l in proc.stdout.splitlines()]
    missing = [l for l in shown if re.sub(r"\s+", " ", l).strip() not in lines]
    printed[title] = missing
  assert not any(printed.values()), printed
