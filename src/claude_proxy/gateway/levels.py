"""One level of policy (the organisation, a group, a user or a key): what the limiter
counts and checks, the same for every kind."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Level:
    """One level of policy a request must pass; None limits mean unlimited."""

    id: str  # what its counts and spend are kept under: key_..., usr_..., grp_..., "org"
    kind: str  # key | user | group | org
    name: str
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str | None = None

    @property
    def limited(self) -> bool:
        """True when requests must be counted (RPM, TPM or budget)."""
        return self.rpm is not None or self.tpm is not None or self.budget_usd is not None

    @property
    def active(self) -> bool:
        """True when the level limits anything at all."""
        return self.limited or self.models is not None

    def allows_model(self, model: str) -> bool:
        """Exact ids or shell-style patterns (`claude-haiku-*`), case-sensitive like the API."""
        if self.models is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)
