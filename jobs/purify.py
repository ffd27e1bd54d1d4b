"""Entry point of the purification job: `python jobs/purify.py --help`.

Works the same under `ray job submit --working-dir . -- python jobs/purify.py ...`
(the job then joins the cluster through RAY_ADDRESS).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.entry import exit_without_teardown, interrupted_while_loading  # noqa: E402

with interrupted_while_loading("jobs/purify.py"):
    from pipeline.cli import main

if __name__ == "__main__":
    # named as it was run in its usage and error lines ("run python jobs/purify.py --help"), not as the console
    # script, which a checkout run without `pip install` (or a cluster's working dir) does not have on PATH;
    # quoted as a shell needs it (a checkout under 'My Projects/'), so that the hint runs as printed
    exit_without_teardown(main(prog=f"python {shlex.quote(sys.argv[0])}"))
