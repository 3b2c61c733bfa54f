"""Read-only mode, for a dashboard shared with strangers: `RNNLAB_READ_ONLY=1` (or `rnnlab lab --read-only`).

Under it nothing can train, upload, cancel, dismiss or write: the Train page shows how to reproduce a logged run
instead of launching one, the Home page offers no demo sweep, no jobs panel is drawn, and the dashboard does
not end the runs of vanished workers (that writes to the store). Pages only read.
"""

import os

READ_ONLY_ENV = "RNNLAB_READ_ONLY"


def read_only() -> bool:
    """Whether this dashboard is read-only (`RNNLAB_READ_ONLY` set to 1, true, yes or on)."""
    return os.environ.get(READ_ONLY_ENV, "").strip().lower() in ("1", "true", "yes", "on")
