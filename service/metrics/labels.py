"""Bounded label values: tenants and models are capped so that no caller can blow up
Prometheus (both are free text in a request).

A process gives its own ``tenant`` label to the tenants listed in ``EZQ_METRICS_TENANTS``
or, when that is empty, to the first ``EZQ_METRICS_MAX_TENANTS`` distinct tenants it sees;
every other tenant is counted as ``other``, and jobs without a tenant as ``none``. Models
likewise: the first ``EZQ_METRICS_MAX_MODELS`` distinct models seen, then ``other``.
"""

from __future__ import annotations

import threading

NO_TENANT = "none"
OTHER = "other"


class TenantLabels:
    """Maps tenants (or models) to label values, admitting at most ``cap`` distinct ones."""

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
_models: TenantLabels | None = None


def tenant_label(tenant: str | None) -> str:
    """The label value for ``tenant`` under the process's cap (read from settings once)."""
    global _labels
    if _labels is None:
        from service.config import get_settings

        settings = get_settings()
        _labels = TenantLabels(settings.metrics_tenants(), settings.ezq_metrics_max_tenants)
    return _labels(tenant)


def model_label(model: str) -> str:
    """The label value for ``model`` under the process's cap (read from settings once)."""
    global _models
    if _models is None:
        from service.config import get_settings

        _models = TenantLabels((), get_settings().ezq_metrics_max_models)
    return _models(model)
