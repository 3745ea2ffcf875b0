"""Usage and cost: prices, costs priced at write time, the ``ezq usage`` report, SQL access.

The SQL views (``usage_daily``, ``usage_monthly``, ``job_costs``, ``conversation_usage``)
live in the migrations; ``docs/sql.md`` documents them and the queries built on them.
"""
