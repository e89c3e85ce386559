"""The provider interface: where a platform's hosts come from, and how they are reached.

A provider creates hosts, lists the ones it made, destroys them, and gives an SSH address for
each. What runs on a host is not its business: the SSH bootstrap installs the platform on any
host a provider hands over, whatever made it.

- ``local``: this machine (``bootstrapper.local``; no SSH, its hosts are agents here).
- ``ssh``: hosts that already exist, named in an inventory file; "create" takes the next
  unused one, "destroy" stops what the platform started there.
- ``azure``: Linux VMs it creates in a resource group of its own, everything tagged so that
  destroy removes exactly what it made.

Every long step reports through ``Progress`` (one line per host and step).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

Progress = Callable[[str], None]


class SshAddress(BaseModel):
    """How to log in to one host: the key file is the private key's path on this machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, description="address or name the host answers SSH on")
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(default="root", min_length=1)
    key_file: Path = Field(description="private key (ed25519 or RSA) accepted by the host")


class Host(BaseModel):
    """One host of a platform, as its provider knows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="the host's name, unique in its platform")
    ssh: SshAddress
    address: str = Field(min_length=1, description="the address the platform's other hosts reach this one on")
    provider: str = Field(description="the provider that made it: local, ssh, azure")


class Provider(Protocol):
    """Where hosts come from. Implementations: ``bootstrapper.ssh``, ``bootstrapper.azure``."""

    name: str

    def create_hosts(self, count: int, progress: Progress) -> list[Host]:
        """Make ``count`` more hosts (or take them from an inventory); ready for SSH on return."""
        ...

    def list_hosts(self) -> list[Host]:
        """The hosts this provider made for this platform (none made: empty)."""
        ...

    def destroy_host(self, name: str, progress: Progress) -> None:
        """Remove one host (and what only it used); an unknown name is an error naming it."""
        ...

    def destroy(self, progress: Progress) -> list[str]:
        """Remove every host and resource this provider made; returns what was removed."""
        ...
