"""Write the purified images of a zip-purify output as image files: `python jobs/export.py --help`.

The same tool as the `zip-purify-export` console script (pipeline.export_cli); the Python API is
pipeline.export.export_images.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.entry import exit_without_teardown, interrupted_while_loading  # noqa: E402

with interrupted_while_loading("jobs/export.py"):
    from pipeline.export_cli import main

if __name__ == "__main__":
    exit_without_teardown(main())
