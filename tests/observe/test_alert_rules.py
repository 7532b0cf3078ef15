"""The shipped Prometheus alert rules: promtool accepts them, and they fire when they should.

Needs Debian's `promtool` (scripts/get-prometheus): skipped where it is
absent, failing instead when `CI` is set.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway_harness import SCRIPT
from observe_files import metric_names, rules
from prometheus_harness import require_tool

CASES = Path(__file__).parents[1] / "data" / "observe" / "alerts_test.yml"

# SPEC C9: queue depth, 503/504 rate, engine failures, heartbeat cool-downs > 5/min,
# missing correlation ids, socket missing.
C9_ALERTS = {
    "SoulstoneQueueDepthHigh", "SoulstoneUnavailableRateHigh",
    "SoulstoneCompletionTimeoutRateHigh", "SoulstoneEngineFailures",
    "SoulstoneHeartbeatCooldowns", "SoulstoneRequestsWithoutCorrelationId",
    "SoulstoneApiSocketMissing",
}  # fmt: skip


@pytest.fixture
def promtool() -> Path:
    return require_tool("promtool")


@pytest.fixture(scope="module")
def printed_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`soulstone observe rules`, as a user would save it."""
    done = subprocess.run([str(SCRIPT), "observe", "rules"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = tmp_path_factory.mktemp("rules") / "soulstone-alerts.yml"
    path.write_text(done.stdout)
    return path


def _without_annotations(rules_file: Path, folder: Path) -> Path:
    """The rules with their annotations dropped, beside a copy of the promtool cases."""
    document = yaml.safe_load(rules_file.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    folder.mkdir()
    (folder / "alerts.yml").write_text(yaml.safe_dump(document))
    shutil.copy(CASES, folder / "alerts_test.yml")
    return folder / "alerts_test.yml"


def _promtool_test(promtool: Path, cases: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), "test", "rules", str(cases)], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_promtool_accepts_the_printed_rules(promtool: Path, printed_rules: Path) -> None:
    done = subprocess.run([str(promtool), "check", "rules", str(printed_rules)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_rules_fire_on_the_series_that_should_fire_them(
    promtool: Path, printed_rules: Path, tmp_path: Path
) -> None:
    done = _promtool_test(promtool, _without_annotations(printed_rules, tmp_path / "cases"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize(("rule", "change"), [
    ("SoulstoneHeartbeatCooldowns", ('code="HEARTBEAT_RATE_LIMITED"', 'code=~"HEARTBEAT_.*"')),
    ("SoulstoneUnavailableRateHigh", ("> 0.05", "> 0.001")),
    ("SoulstoneApiSocketMissing", ("== 0", "== 1")),
])  # fmt: skip
def test_the_cases_catch_a_rule_that_fires_wrongly(
    promtool: Path, printed_rules: Path, tmp_path: Path, rule: str, change: tuple[str, str]
) -> None:
    """A rule that also fires on the series that should stay silent fails the cases."""
    document = yaml.safe_load(printed_rules.read_text())
    for group in document["groups"]:
        for each in group["rules"]:
            if each["alert"] == rule:
                assert change[0] in each["expr"]
                each["expr"] = each["expr"].replace(*change)
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(document))
    done = _promtool_test(promtool, _without_annotations(broken, tmp_path / "cases"))
    assert done.returncode != 0
    assert f"alertname: {rule}," in done.stdout + done.stderr


def test_every_c9_alert_is_shipped() -> None:
    assert {rule["alert"] for rule in rules()} >= C9_ALERTS


def test_every_rule_says_how_bad_and_which_metric() -> None:
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        description = rule["annotations"]["description"]
        assert metric_names(rule["expr"]) & set(re.findall(r"[a-z_:]+", description)), (
            f"{name}: the description names none of the metrics of {rule['expr']!r}"
        )
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
