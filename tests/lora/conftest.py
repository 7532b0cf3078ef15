"""Fixtures shared by the adapter tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from soulstone.lora.owner import RegistryOwner


@pytest.fixture
async def owner(tmp_path: Path) -> AsyncIterator[RegistryOwner]:
    """A ZODB adapter registry in the test's folder, closed afterwards."""
    registry = await RegistryOwner.open(tmp_path / "data")
    try:
        yield registry
    finally:
        await registry.close()
