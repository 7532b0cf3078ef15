"""Pure LoRA parts: session transitions for prefetch, and the watch folder's readiness rule."""

from __future__ import annotations

import os
from pathlib import Path

from soulstone.lora.prefetch import Transitions
from soulstone.lora.watch import Watcher


def test_transitions_predict_the_most_frequent_follower() -> None:
    transitions = Transitions()
    assert transitions.observe("s", "a") == (False, None)
    assert transitions.observe("s", "b") == (False, None)  # learns a -> b
    assert transitions.observe("s", "a") == (False, "b")  # after a, b is likely
    assert transitions.observe("s", "b") == (True, "a")  # predicted: a hit
    assert transitions.observe("other", "a") == (False, "b")  # shared across sessions
    assert transitions.observe("other", "c") == (False, None)  # a miss
    assert transitions.follows["a"] == {"b": 2, "c": 1}


def test_watcher_hands_out_whole_still_folders_once(tmp_path: Path) -> None:
    watcher = Watcher(tmp_path)
    adapter = tmp_path / "ada"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert watcher.ready() == []  # the weights are missing
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(b"half")
    assert watcher.ready() == []  # first sight: not known to be still yet
    weights.write_bytes(b"half and the rest")
    assert watcher.ready() == []  # changed since the last look
    assert watcher.ready() == [adapter]  # still for one interval: ready
    assert watcher.ready() == []  # handed out once
    os.utime(weights, ns=(1, 1))
    assert watcher.ready() == []
    assert watcher.ready() == [adapter]  # a new version, once it settles
