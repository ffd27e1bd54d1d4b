"""The ranged requests a run may spend, before it starts, on counting its files' rows from their headers (TFRecord
records, `tfrecord_count`; Arrow IPC record batches, `ipc_headers`; tar shards' keys, `tar_count`): one budget for all
of a run's files, shared by the threads reading them, past which the files not yet counted are left uncounted (the
progress shows no total, the dry run says the counts are unknown) rather than the run slow to start. A local file's
reads are not counted, as they are cheap, except a tar shard's: tarfile parses each member's header in Python, which
costs more than the read."""

from __future__ import annotations

import threading

# At 20 ms a request and 16 files at a time, about 13 s of planning. A data set of large images takes one a record
# (TFRecord) or a record batch (Arrow IPC): 10,000 of them in all.
MAX_READS = 10_000


class BudgetSpent(ValueError):
    """A request past the run's budget: the file is not counted."""


class ReadBudget:
    """The ranged requests left to the counting of a run's files (MAX_READS), shared by the threads counting them;
    `spent` once one was refused."""

    def __init__(self, reads: int | None = None) -> None:
        self.left = MAX_READS if reads is None else reads
        self.spent, self._lock = False, threading.Lock()

    def take(self) -> None:
        """One request taken; BudgetSpent when none is left."""
        with self._lock:
            if self.left <= 0:
                self.spent = True
                raise BudgetSpent(f"its headers would take more than the {MAX_READS:,} requests allowed to count a "
                                  "run's files before it starts")
            self.left -= 1
