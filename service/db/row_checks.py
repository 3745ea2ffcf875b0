"""Conditions checked on a row a statement finds by its primary key.

``jobs`` has partial indexes on a job's state (the running jobs, the pending ones, the
throttled ones). A statement that finds one job by id and checks its state in the same
``WHERE`` lets the planner read that job through such an index instead, filtering every
entry by id: the cheaper plan when the table's statistics say the state is rare (taken at
a quiet moment, or never taken on a new database). The hot statements are prepared, so
that plan is kept for as long as the connection lives (until the next ANALYZE), and at
1,000 calls in flight every record of a job read the 1,000 running ones. Wrapped in
``IS TRUE`` (the same rows: ``WHERE`` drops NULL as it drops false), the condition no
longer matches an index's predicate, and only the primary key finds the row.
"""

from __future__ import annotations


def on_row(condition: str) -> str:
    """``condition``, checked on the row found by primary key, never used to choose an
    index."""
    return f"({condition}) IS TRUE"
