"""Results: run directories <-> DataFrames (`runs`), table maths (`tables`), the headline (`headline`). No torch.

`harness.results.load(*run_dirs)` is the public entry point: every table of every run, concatenated.
"""

from harness.results.runs import MANIFEST, TABLES, expand_runs, load, load_run, read_manifest, require_tables

__all__ = ["MANIFEST", "TABLES", "expand_runs", "load", "load_run", "read_manifest", "require_tables"]
