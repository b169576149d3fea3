"""Writes RESULTS.md's summary table from the studies' committed study.json files.

  python -m launch.summary            # rewrite the table in RESULTS.md
  python -m launch.summary --check    # exit 1 if the table differs from the files

After a study's full run, copy its study.json to docs/results/<name>.json and
run this; each study's `headline` words its verdicts (resjax/studies/summary.py).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from launch import common
from resjax import errors, files
from resjax.studies import summary

_RESULTS = flags.DEFINE_string("results", "docs/results", "Folder of the studies' study.json copies.")
_REPORT = flags.DEFINE_string("report", "RESULTS.md", "The report whose summary table is written.")
_CHECK = flags.DEFINE_bool("check", False, "Only compare: exit 1 if the table is out of date.")


@common.readable_errors
def main(argv: list[str]) -> None:
  errors.check(len(argv) == 1, f"unexpected arguments {argv[1:]}; use --results and --report")
  errors.check(os.path.isdir(_RESULTS.value),
               f"--results={_RESULTS.value} is not a folder; pass the folder of study.json copies")
  errors.check(os.path.isfile(_REPORT.value),
               f"--report={_REPORT.value} is not a file; pass the report (RESULTS.md)")
  with open(_REPORT.value) as f:
    report = f.read()
  results = summary.load(_RESULTS.value)
  new = summary.rewrite(report, summary.table(results, report))
  if _CHECK.value:
    if new != report:
      print(f"{_REPORT.value}: the summary table differs from {_RESULTS.value}; "
            "run python -m launch.summary", file=sys.stderr)
      sys.exit(1)
    print(f"{_REPORT.value}: summary table matches {len(results)} study results")
    return
  files.write_text(_REPORT.value, new)
  print(f"wrote the summary table of {_REPORT.value} from {len(results)} study results")


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
