"""Write the purified images of a zip-purify output as image files: `python jobs/export.py --help`.

The same tool as the `zip-purify-export` console script (pipeline.export_cli); the Python API is
pipeline.export.export_images.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.entry import exit_without_teardown, interrupted_while_loading  # noqa: E402

with interrupted_while_loading("jobs/export.py"):
    from pipeline.export_cli import main

if __name__ == "__main__":
    # named as it was run in its usage and error lines ("run python jobs/export.py --help"), not as the console
    # script, which a checkout run without `pip install` (or a cluster's working dir) does not have on PATH;
    # quoted as a shell needs it (a checkout under 'My Projects/'), so that the hint runs as printed
    exit_without_teardown(main(prog=f"python {shlex.quote(sys.argv[0])}"))
