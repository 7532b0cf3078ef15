"""The tools policy: canonical hashes, drift, the request check with JSON pointers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soulstone.tools.policy import (
    DEFAULT_FUNCTIONS,
    ToolSchemaMismatch,
    canonical,
    check_tools,
    default_policy,
    drifted,
    first_difference,
    pin,
    repinned,
)
from soulstone.tools.store import PolicyError, load_policy, save_policy

MEMORY_TOOLS = {
    "store_core", "fetch_core", "append_fifo", "evict_fifo", "write_recall", "search_recall",
    "search_archival", "ingest_archival", "record_heartbeat",
}  # fmt: skip


def test_default_policy_ships_the_nine_memory_tools_pinned() -> None:
    policy = default_policy()
    assert {t.name for t in policy.tools} == MEMORY_TOOLS
    assert drifted(policy) == []
    for tool in policy.tools:
        props = tool.function["parameters"]["properties"]
        assert props["request_heartbeat"]["type"] == "boolean"
    assert policy.heartbeat.model_dump() == {
        "heartbeat_rps_limit": 3, "heartbeat_cooldown_ms": 750, "max_chain_depth": 8,
        "max_chain_duration_ms": 60000,
    }  # fmt: skip


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical({"b": 1, "a": ["é", {"d": None, "c": True}]}) == (
        '{"a":["é",{"c":true,"d":null}],"b":1}'.encode()
    )
    assert pin({"a": 1}) == pin(json.loads('{ "a" : 1 }'))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=12,
)  # fmt: skip


@given(JSON)
def test_first_difference_is_none_only_for_equal_values(value: object) -> None:
    assert first_difference(value, copy.deepcopy(value)) is None
    assert first_difference({"x": value}, {"x": [value]}) is not None


def test_requests_must_use_the_pinned_schemas_exactly() -> None:
    policy = default_policy()
    tools = [{"type": "function", "function": copy.deepcopy(f)} for f in DEFAULT_FUNCTIONS[:2]]
    check_tools(tools, policy, ["any-model"], "refuse")
    changed = copy.deepcopy(tools)
    changed[1]["function"]["parameters"]["properties"]["label"]["type"] = "integer"
    with pytest.raises(ToolSchemaMismatch) as caught:
        check_tools(changed, policy, ["m"], "pass")
    assert (caught.value.tool, caught.value.pointer) == (
        "fetch_core", "/parameters/properties/label/type",
    )  # fmt: skip
    unknown = [{"type": "function", "function": {"name": "rm_rf", "parameters": {}}}]
    with pytest.raises(ToolSchemaMismatch, match="not in the tools policy"):
        check_tools(unknown, policy, ["m"], "refuse")
    check_tools(unknown, policy, ["m"], "pass")  # unknown tools pass by default
    narrowed = policy.model_copy(update={"models": {"small": ["store_core"]}})
    with pytest.raises(ToolSchemaMismatch, match="for small"):
        check_tools(tools, narrowed, ["small"], "pass")
    # An adapter of the base `small` does not skip the base's rule.
    with pytest.raises(ToolSchemaMismatch, match="for small"):
        check_tools(tools, narrowed, ["small-adapter", "small"], "pass")
    check_tools(tools[:1], narrowed, ["small-adapter", "small"], "pass")


def test_drift_is_refused_and_pin_fixes_it(tmp_path: Path) -> None:
    path = tmp_path / "tools.yaml"
    save_policy(path, default_policy())
    assert load_policy(path) == default_policy()
    text = path.read_text().replace("Write a named block of core memory.", "Write anything.")
    path.write_text(text)
    with pytest.raises(PolicyError, match="store_core"):
        load_policy(path)
    loose = load_policy(path, check_pins=False)
    assert drifted(loose) == ["store_core"]
    save_policy(path, repinned(loose))
    assert drifted(load_policy(path)) == []
    assert load_policy(tmp_path / "absent.yaml") == default_policy()
