"""Model references: the `model` and `revision` fields, and where the engine takes its model."""

from __future__ import annotations

import re

from soulstone.codex.engines import MODEL_OPTIONS, MODEL_PLACEHOLDER, exec_model
from soulstone.codex.models import Soulstone

# Hugging Face repo ids: `org/name`, each part letters, digits, '-', '_', '.' (96 at most),
# neither starting nor ending with '-' or '.', with no '--' or '..' anywhere.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
REPO_ID_RE = re.compile(rf"{_PART}/{_PART}")
REVISION_RE = re.compile(r"[^\s\x00-\x1f\x7f-][^\s\x00-\x1f\x7f]{0,255}")
COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def repo_id_problem(model: str) -> str | None:
    """What is wrong with a Hugging Face repo id, or None when it is well formed."""
    if REPO_ID_RE.fullmatch(model) is None or "--" in model or ".." in model:
        return (
            f"malformed Hugging Face repo id {model!r}: expected 'org/name' "
            "(letters, digits, '-', '_', '.'; no '--' or '..')"
        )
    return None


def revision_problem(revision: str) -> str | None:
    """What is wrong with a revision (commit hash, tag or branch), or None."""
    if REVISION_RE.fullmatch(revision) is None or ".." in revision:
        return f"malformed revision {revision!r}: give a commit hash, a tag or a branch name"
    return None


def _placement_problem(soulstone: Soulstone, model: str) -> tuple[str, str] | None:
    """How the engine gets the resolved snapshot folder, when it cannot."""
    argv = soulstone.argv
    if any(MODEL_PLACEHOLDER in word for word in argv):
        return None
    named = exec_model(argv)
    if named is not None:
        return ("exec", f"exec names its own model ({named!r}) while model = {model!r} "
                        f"names one too: write {MODEL_PLACEHOLDER} where the engine takes "
                        "its model")  # fmt: skip
    if soulstone.engine not in MODEL_OPTIONS:
        return ("exec", f"soulstone cannot hand {soulstone.engine} its model: write "
                        f"{MODEL_PLACEHOLDER} in exec where it takes the model folder "
                        f"(or a file in it, as {MODEL_PLACEHOLDER}/model.gguf)")  # fmt: skip
    return None


def reference_problems(soulstone: Soulstone) -> list[tuple[str, str]]:
    """(field, message) pairs for a resolved soulstone's `model`, `revision` and `{model_path}`."""
    found: list[tuple[str, str]] = []
    model = soulstone.model
    placeholder = any(MODEL_PLACEHOLDER in word for word in soulstone.argv)
    if soulstone.revision is not None:
        if model is None:
            found.append(("revision", "revision pins a Hugging Face model: set model too"))
        elif (problem := revision_problem(soulstone.revision)) is not None:
            found.append(("revision", problem))
    if model is None:
        if placeholder and not soulstone.model_path:
            found.append(("exec", f"exec uses {MODEL_PLACEHOLDER}, but neither model nor "
                                  "model_path is set"))  # fmt: skip
        return found
    if (problem := repo_id_problem(model)) is not None:
        found.append(("model", problem))
    if soulstone.model_path is not None:
        found.append(("model_path", "set either model (a Hugging Face repo id) or model_path "
                                    "(a local folder), not both"))  # fmt: skip
    if soulstone.runtime != "process":
        found.append(("model", f"model is resolved from the Hugging Face cache for the process "
                               f"runtime only; under {soulstone.runtime}, mount the weights and "
                               "set model_path"))  # fmt: skip
    elif soulstone.argv and (placement := _placement_problem(soulstone, model)) is not None:
        found.append(placement)
    return found
