"""Read and write tools.yaml (the built-in default applies when there is none)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from soulstone.errors import SoulstoneError
from soulstone.files import replace_file
from soulstone.tools.policy import Policy, default_policy, drifted


class PolicyError(SoulstoneError):
    """tools.yaml is unreadable, malformed, or its pins have drifted."""


def load_policy(path: Path, check_pins: bool = True) -> Policy:
    """The policy at path (or the default when absent); PolicyError naming drifted tools."""
    if not path.exists():
        return default_policy()
    try:
        policy = Policy.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError) as error:
        raise PolicyError(f"{path}: cannot read it: {error}") from None
    except ValidationError as error:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise PolicyError(f"{path}: {where}") from None
    names = [t.name for t in policy.tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PolicyError(f"{path}: tools listed twice: {', '.join(duplicates)}")
    if check_pins and (drift := drifted(policy)):
        raise PolicyError(f"{path}: the pinned sha256 no longer matches the schema of "
                          f"{', '.join(drift)} (run `soulstone tools pin` after a deliberate "
                          "change)")  # fmt: skip
    return policy


def save_policy(path: Path, policy: Policy) -> None:
    """Write tools.yaml atomically (mode 0600)."""
    text = "# soulstone tools policy (SPEC C6). Edit, then run `soulstone tools pin`.\n"
    text += yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    replace_file(path, text.encode("utf-8"))
