"""The gateway's guard: identities, limits, budgets and the token counter, reloadable together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soulstone.codex.models import Soulstone
from soulstone.guard.budget import Budget, budget_for
from soulstone.guard.clients import ClientsDecl, GatewayDecl
from soulstone.guard.folder_tokenizer import FolderTokenizers
from soulstone.guard.identity import Identities
from soulstone.guard.limits import ClientLimiter, Slots
from soulstone.guard.store import load_clients
from soulstone.guard.tokenize import TokenCounter
from soulstone.runtimes.upstream import Upstreams


@dataclass
class Guard:
    """Everything the request path asks before it forwards anything."""

    path: Path
    overrides: dict[str, Any]
    counter: TokenCounter
    config: ClientsDecl = field(default_factory=ClientsDecl)
    identities: Identities = field(default_factory=lambda: Identities(None))
    limiter: ClientLimiter = field(default_factory=ClientLimiter)
    slots: Slots = field(default_factory=lambda: Slots(16, 64))
    _budgets: dict[tuple[str, int], Budget] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, upstreams: Upstreams, overrides: dict[str, Any],
             on_tokenizer_failed: Callable[[Path, str], None] | None = None) -> Guard:  # fmt: skip
        """Read the clients file (absent: only the gateway's own user); ClientsFileError if bad.

        `on_tokenizer_failed` hears once of each remote's tokenizer folder that cannot be loaded.
        """
        counter = TokenCounter(upstreams, FolderTokenizers(on_tokenizer_failed))
        guard = cls(path, {k: v for k, v in overrides.items() if v is not None}, counter)
        guard.apply(load_clients(path))
        return guard

    def apply(self, clients: ClientsDecl | None) -> None:
        """Use this clients file from now on (requests in flight keep their slots)."""
        config = clients or ClientsDecl()
        gateway = config.gateway.model_copy(update=self.overrides)
        self.config = config.model_copy(update={"gateway": gateway})
        self.identities = Identities(clients)
        self._budgets = {}
        self.slots.limit, self.slots.queue = gateway.max_parallel, gateway.queue

    def reload(self) -> None:
        """Read the clients file again (revoked keys stop working)."""
        self.apply(load_clients(self.path))

    @property
    def gateway(self) -> GatewayDecl:
        """Gateway-wide limits in force."""
        return self.config.gateway

    def budget(self, soulstone: Soulstone, client_limits: Any) -> Budget:
        """The token budget for this soulstone and client (worked out once per clients file)."""
        key = (soulstone.id, id(client_limits))  # limits objects live as long as this file
        found = self._budgets.get(key)
        if found is None:
            found = budget_for(self.gateway, self.config.soulstones.get(soulstone.id),
                               client_limits)  # fmt: skip
            self._budgets[key] = found
        return found
