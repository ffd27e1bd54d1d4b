"""hdfs:// on a machine without Java: one line that says what to install, not pyarrow's 89-line error.

pyarrow's HDFS client runs in a JVM. Without one, `--output hdfs://namenode:8020/out` printed "error: Unable to load
libjvm" and then a `dlopen(...) failed` line for each of the 88 places pyarrow looked.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from pipeline.cli import main
from pipeline.storage import filesystem
from tests.jobutil import png_inputs

PYARROW_NO_JVM = OSError("Unable to load libjvm\n" + "\n".join(
    f"dlopen(/usr/lib/jvm/{k}/libjvm.so) failed: /usr/lib/jvm/{k}/libjvm.so: cannot open shared object file: "
    "No such file or directory" for k in range(88)))


@pytest.fixture
def no_jvm(monkeypatch):
    real = fsspec.filesystem

    def fake(protocol: str, **options):
        if protocol in ("hdfs", "arrow_hdfs"):
            raise PYARROW_NO_JVM
        return real(protocol, **options)

    monkeypatch.setattr(fsspec, "filesystem", fake)


@pytest.mark.usefixtures("no_jvm")
def test_the_missing_jvm_is_one_line_that_says_what_to_do() -> None:
    with pytest.raises(OSError) as err:
        filesystem("hdfs", {"host": "namenode", "port": 8020})
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert "needs a Java runtime" in message and "looked in 88 places, such as /usr/lib/jvm/0/libjvm.so" in message
    assert "JAVA_HOME" in message and "CLASSPATH" in message


@pytest.mark.usefixtures("no_jvm")
def test_a_dry_run_to_hdfs_without_java_stops_with_that_line(tmp_path: Path, capsys) -> None:
    png_inputs(tmp_path / "in", 2)
    assert main(["--input", str(tmp_path / "in"), "--output", "hdfs://namenode:8020/out", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "needs a Java runtime" in err and "dlopen" not in err, err


def test_other_errors_of_a_file_system_are_left_as_they_are(monkeypatch) -> None:
    def fake(protocol: str, **options):
        raise OSError("connection refused")

    monkeypatch.setattr(fsspec, "filesystem", fake)
    with pytest.raises(OSError, match="^connection refused$"):
        filesystem("hdfs", {})
    monkeypatch.setattr(fsspec, "filesystem", lambda protocol, **options: (_ for _ in ()).throw(PYARROW_NO_JVM))
    with pytest.raises(OSError, match="Unable to load libjvm"):  # only hdfs:// is pyarrow's JVM client
        filesystem("webhdfs", {})
