"""The command-line entry's end: a process that started no Ray ends with its tool's status and all it printed, past
the interpreter's teardown (where a native thread pool sometimes aborted a finished dry run with SIGABRT)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ended(code: str) -> subprocess.CompletedProcess:
    program = (f"import sys, atexit; sys.path.insert(0, {str(ROOT)!r})\n"
               "from pipeline.entry import exit_without_teardown\n"
               "atexit.register(lambda: print('teardown ran'))\n"
               "print('report ' * 20000); print('said', file=sys.stderr)\n"
               f"exit_without_teardown({code})\n")
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)


def test_the_status_and_everything_printed_come_through_and_the_teardown_is_skipped() -> None:
    done = _ended("3")
    assert done.returncode == 3
    assert done.stdout.count("report") == 20000 and done.stderr.strip() == "said"  # flushed, though buffered in a pipe
    assert "teardown ran" not in done.stdout


def test_a_tool_that_returns_nothing_ends_with_status_0() -> None:
    assert _ended("None").returncode == 0


def test_a_process_that_started_ray_ends_through_the_usual_exit_with_its_objects_frozen_out_of_the_last_collection(
        ) -> None:
    """With Ray up, Ray's own exit hooks must run (they stop what it started), so the process ends the usual way; what
    it holds is frozen first, so that Python's last collection does not walk every object torch and Ray made."""
    program = (f"import sys, atexit, gc, types; sys.path.insert(0, {str(ROOT)!r})\n"
               "sys.modules['ray'] = types.SimpleNamespace(is_initialized=lambda: True)  # a Ray that is up\n"
               "from pipeline.entry import exit_without_teardown\n"
               "atexit.register(lambda: print('teardown ran, frozen:', gc.get_freeze_count() > 0))\n"
               "exit_without_teardown(4)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 4
    assert done.stdout.strip() == "teardown ran, frozen: True"


def test_a_tools_stdout_holds_its_own_lines_and_what_rays_code_prints_goes_to_stderr() -> None:
    """Ray prints its raylet's messages ("(raylet) A worker died ...") to the driver's stdout; the tools' stdout is
    for their result lines alone (a script reads them), so Ray's go to stderr, whichever thread prints them."""
    import io
    import threading

    from pipeline.entry import RayLinesToStderr

    out, err = io.StringIO(), io.StringIO()
    routed = RayLinesToStderr(out, err)
    print("read 6, purified 6", file=routed)  # the job's
    rays = {"__name__": "ray._private.worker", "routed": routed}
    exec("def print_worker_logs(line):\n    print(line, file=routed)\n", rays)
    thread = threading.Thread(target=rays["print_worker_logs"], args=("(raylet) A worker died",))
    thread.start()
    thread.join()
    rays["print_worker_logs"]("(raylet) Task ... will be retried [repeated 2x across cluster]")  # at shutdown
    routed.flush()
    assert out.getvalue() == "read 6, purified 6\n"
    assert err.getvalue() == "(raylet) A worker died\n(raylet) Task ... will be retried [repeated 2x across cluster]\n"
    assert routed.isatty() is False and routed.getvalue() == out.getvalue()  # the rest is stdout's own
