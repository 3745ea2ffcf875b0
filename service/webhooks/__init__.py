"""Webhooks: a signed Standard Webhooks event for every finished job, delivered durably.

``urls`` checks callback URLs at enqueue; ``events`` builds the body; ``outbox`` holds the
SQL for deliveries and attempts; ``delivery`` runs one attempt (``signing``, ``sender``
over the address-checked ``transport``, ``retry``); ``tasks`` is the Celery side.
"""
