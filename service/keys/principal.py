"""Who is calling the HTTP interface, and which tenants that lets it act for."""

from __future__ import annotations

from dataclasses import dataclass

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
