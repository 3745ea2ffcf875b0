"""Who is calling the HTTP interface, and which tenants that lets it act for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.errors import InvalidRequest, TenantForbidden


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: ``key_id`` goes to ``jobs.created_by``.

    ``tenants`` is None for an admin key (every tenant, for operators), else the tenants
    the key was bound to.
    """

    key_id: str
    tenants: frozenset[str] | None

    @property
    def admin(self) -> bool:
        return self.tenants is None

    def job_as_seen(self, view: dict[str, Any]) -> dict[str, Any]:
        """A job's view as this caller may see it. A tenant key sees until when a running
        job's lease holds, not which worker holds it: a host name and process id of the
        deployment, which operators (admin keys, ``ezq show``) need and tenants do not."""
        lease = view.get("lease")
        if self.tenants is not None and lease is not None and "holder" in lease:
            view["lease"] = {k: v for k, v in lease.items() if k != "holder"}
        return view

    def tenant_for(self, requested: object) -> object:
        """The tenant a new job is written for.

        A requested tenant outside the key's raises TenantForbidden; none requested is the
        key's tenant when it has exactly one. Values that are not strings go on to
        validation, which names the type error.
        """
        if self.tenants is None or (requested is not None and not isinstance(requested, str)):
            return requested
        if requested is None:
            if len(self.tenants) == 1:
                return next(iter(self.tenants))
            raise InvalidRequest(
                "tenant", f"is required: this key acts for {len(self.tenants)} tenants"
            )
        if requested not in self.tenants:
            raise TenantForbidden(requested)
        return requested

    def check_filter(self, tenant: str | None) -> None:
        """Refuse a list filter naming a tenant the key may not see."""
        if tenant is not None and self.tenants is not None and tenant not in self.tenants:
            raise TenantForbidden(tenant)
