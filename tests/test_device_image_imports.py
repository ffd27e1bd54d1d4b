"""What bench/device_session.sh runs on a lent GPU machine loads without Ray and s3fs: that machine's image holds
PyTorch, numpy, pyarrow, pillow, fsspec and tqdm, but neither of them (.library/device/KINDS.md), and nothing can be
installed there. A module of the evaluation, the training or the purifier that imported Ray at its top would end the
one GPU session a task may get at its first command. (The whole script, `SMOKE=1`, ran on a CPU with Ray made
unimportable the same way, 2026-12-05.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["jobs/evaluate.py", "jobs/train_prior.py", "bench/purifier_bench.py"]


def test_the_device_sessions_tools_and_the_evaluation_training_and_purifier_modules_load_without_ray_or_s3fs() -> None:
    # One process for them all (a process each paid its Python and torch start four times): a module that imports Ray
    # fails where it is imported first, whichever script or module that is, and what one imported another finds loaded.
    modules = ["pipeline.evaluation." + p.stem for p in sorted((ROOT / "pipeline/evaluation").glob("*.py"))]
    modules += ["pipeline.training_run", "pipeline.training_loop", "pipeline.purifier", "pipeline.checkpoint"]
    program = ("import importlib, runpy, sys\n"
               "sys.modules['ray'] = None; sys.modules['s3fs'] = None  # import ray -> ImportError, as there\n"
               f"for name in {modules!r}:\n    importlib.import_module(name)\n"
               f"for script in {SCRIPTS!r}:\n"
               "    print('== ' + script, flush=True)\n"
               "    sys.argv = [script, '--help']\n"
               "    try:\n        runpy.run_path(script, run_name='__main__')\n"
               "    except SystemExit as done:\n        assert done.code in (0, None), (script, done.code)\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    helps = done.stdout.split("== ")[1:]
    assert [h.split("\n", 1)[0] for h in helps] == SCRIPTS, done.stdout[-3000:]
    for script, help_text in zip(SCRIPTS, helps, strict=True):
        assert "usage:" in help_text, (script, help_text[-2000:])
