"""The job's errors, each with a message that says what to do (the CLI prints it as one line)."""

from __future__ import annotations


class JobError(RuntimeError):
    """A run that cannot start or cannot be trusted; the message says what to do."""


class JobFailed(JobError):
    """A run that had started failed (a batch failed past its retries, or counts that do not add up); what it wrote is
    whole files, and the same command resumes it."""


class JobInterrupted(JobError):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM; what it wrote is whole files, and the same command resumes it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class NotOnThisNodeError(JobError):
    """A local path the driver checked (--input's folder, --output, the checkpoint) that a read task, write task or
    purifier actor does not find on the node Ray ran it on: on a Ray cluster of several machines without a shared file
    system, a local path is the driver's machine's disk. Also a remote store whose fsspec package (adlfs, gcsfs) the
    node lacks. Raised where the work runs, before it reads or writes there (`pipeline.stages`); Ray does not retry it
    (`pipeline.job.task_retry_options`): another try fails the same way."""
