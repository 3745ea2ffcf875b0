"""Flow control: limits, priorities, fair shares and budgets, shared by every worker.

``admission`` is the step at claim, ``release`` the step when a call ends; the SQL lives in
``service.db.flow``.
"""
