"""Live tokens: a running job's reply, readable while the worker receives it.

Each job has one Redis stream (``ezq:live:<job id>``, bounded and expiring). The worker
appends batched deltas to it (``publisher``), an ``attempt_restarted`` entry when a new
attempt starts, and the final event when the job ends; readers (``follow`` for Python and
the CLI, ``service.api.events_route`` for HTTP) replay it from the start or from an entry
id, and fall back to Postgres for a job that has ended.
"""
