"""VM inventory through libvirt: the domains a hypervisor runs, read with libvirt-python.

Read-only connection; the tests use libvirt's built-in ``test:///default`` driver, a real
connection to a fake hypervisor that ships with every libvirt.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import libvirt

from kernel.errors import TransientError

# virDomainState values.
_DOMAIN_STATES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}


class InventoryUnavailableError(TransientError):
    """libvirt could not be reached or answered with an error; the sync is retried."""


@dataclass(frozen=True)
class Domain:
    uuid: uuid.UUID
    name: str
    state: str


def list_domains(uri: str) -> list[Domain]:
    """Every domain, running or defined, at ``uri``."""
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        raise InventoryUnavailableError(f"cannot open libvirt at {uri}: {exc}") from exc
    try:
        domains = []
        for domain in conn.listAllDomains(0):
            state_code = domain.state()[0]
            domains.append(
                Domain(
                    uuid=uuid.UUID(domain.UUIDString()),
                    name=domain.name(),
                    state=_DOMAIN_STATES.get(state_code, f"state-{state_code}"),
                )
            )
        return sorted(domains, key=lambda d: d.name)
    except libvirt.libvirtError as exc:
        raise InventoryUnavailableError(f"libvirt at {uri} failed listing domains: {exc}") from exc
    finally:
        conn.close()
