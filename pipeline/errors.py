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


class InputRefused(ValueError):
    """An input the listing will not read as given: two files that would share one id, an object that is a folder too,
    a web folder given without its '/'. Its message names the files and the fix, and is said whole, as it is: not as
    a listing that failed ("cannot list input ...: ValueError: ..."), cut to a reject reason's length, which dropped
    the second name of a pair and the fix."""


class UnlistableFolder(OSError):
    """A local input folder that cannot be listed (an I/O error), whose files a run would leave out unseen: its message
    names the folder and the fix, and is said whole (`UnlistableFolderDenied` for one without read permission, a
    PermissionError as its listing's error was)."""


class UnlistableFolderDenied(UnlistableFolder, PermissionError):
    """An input folder this user may not list (`UnlistableFolder`)."""


def unlistable_folder(err: OSError, message: str) -> UnlistableFolder:
    """The error for an input folder whose listing failed with `err`, of the same errno and kind (denied or not)."""
    kind = UnlistableFolderDenied if isinstance(err, PermissionError) else UnlistableFolder
    return kind(err.errno, message)


class NotOnThisNodeError(JobError):
    """A local path the driver checked (--input's folder, --output, the checkpoint) that a read task, write task or
    purifier actor does not find on the node Ray ran it on: on a Ray cluster of several machines without a shared file
    system, a local path is the driver's machine's disk. Also a remote store whose fsspec package (adlfs, gcsfs) the
    node lacks. Raised where the work runs, before it reads or writes there (`pipeline.stages`); Ray does not retry it
    (`pipeline.job.task_retry_options`): another try fails the same way."""


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is a device's want of memory: CUDA's (torch.OutOfMemoryError), or an allocation the CPU allocator
    was refused (one it grants and cannot back ends the process instead, with the kernel's OOM killer)."""
    import torch  # asked only by tools that ran torch; this module stays light for the others

    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "can't allocate memory" in str(err))
