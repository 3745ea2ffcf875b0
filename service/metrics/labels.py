"""Bounded label values: tenants are capped so that one busy service cannot blow up Prometheus.

A process gives its own ``tenant`` label to the tenants listed in ``EZQ_METRICS_TENANTS``
or, when that is empty, to the first ``EZQ_METRICS_MAX_TENANTS`` distinct tenants it sees;
every other tenant is counted as ``other``, and jobs without a tenant as ``none``.
"""

from __future__ import annotations

import threading

NO_TENANT = "none"
OTHER = "other"


class TenantLabels:
    """Maps tenants to label values, admitting at most ``cap`` distinct ones."""

    def __init__(self, allowed: tuple[str, ...] = (), cap: int = 50) -> None:
        self._allowed = frozenset(allowed)
        self._cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str | None) -> str:
        if tenant is None or tenant == "":
            return NO_TENANT
        if self._allowed:
            return tenant if tenant in self._allowed else OTHER
        if tenant in self._seen:
            return tenant
        with self._lock:
            if len(self._seen) < self._cap:
                self._seen.add(tenant)
                return tenant
        return OTHER


_labels: TenantLabels | None = None


def tenant_label(tenant: str | None) -> str:
    """The label value for ``tenant`` under the process's cap (read from settings once)."""
    global _labels
    if _labels is None:
        from service.config import get_settings

        settings = get_settings()
        _labels = TenantLabels(settings.metrics_tenants(), settings.ezq_metrics_max_tenants)
    return _labels(tenant)
