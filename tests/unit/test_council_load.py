"""Council files: typed values, and every problem at once naming file, table and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import EXAMPLES, load, one, write
from soulstone.council.load import council_files, councils_source, load_councils
from soulstone.council.models import Council, Councils, Persona
from soulstone.errors import CouncilError, Problem, UsageError
from soulstone.paths import Paths

CODEX = load(EXAMPLES)  # serves alpha, beta, eye, flash, scribe

GOOD = """
[persona.maat]
model = "alpha"
system = "You are Ma'at. Judge truth and alignment."
temperature = 0.3
max_tokens = 512
tags = ["truth", "alignment"]

[persona.lilith]
model = "lilith"
system = "You are Lilith. Critique from the shadow."
stop = ["END"]

[persona.thoth]
model = "beta"

[persona.router]
model = "flash"

[council.pantheon]
personas = ["maat", "lilith", "thoth"]
router = { kind = "model", persona = "router", max_personas = 2 }
aggregator = "thoth"
anonymous = true
veto = "maat"
max_rounds = 3
quorum = 2
timeout_s = 30
memory = { embed_model = "eye" }

[council.myth]
personas = ["maat", "thoth"]
router = "rules"
aggregator = "maat"
memory = false

[[council.myth.rules]]
match = "(?i)myth|history"
personas = ["thoth"]
"""


def councils_of(
    tmp_path: Path, files: dict[str, str], adapters: set[str] | None = None
) -> Councils:
    return load_councils(write(tmp_path / "councils", files), CODEX, adapters or set())


def problems_of(
    tmp_path: Path, files: dict[str, str], adapters: set[str] | None = None
) -> tuple[Problem, ...]:
    with pytest.raises(CouncilError) as caught:
        councils_of(tmp_path, files, adapters)
    return caught.value.problems


def test_a_valid_file_loads_every_field(tmp_path: Path) -> None:
    councils = councils_of(tmp_path, {"pantheon.toml": GOOD}, {"lilith"})
    maat = councils.persona("maat")
    assert maat == Persona(name="maat", model="alpha", tags=("truth", "alignment"),
                           system="You are Ma'at. Judge truth and alignment.",
                           temperature=0.3, max_tokens=512)  # fmt: skip
    assert maat.sampling() == {"temperature": 0.3, "max_tokens": 512}
    lilith = councils.persona("lilith")
    assert lilith is not None and lilith.sampling() == {"stop": ["END"]}
    pantheon = councils.council("pantheon")
    assert pantheon is not None
    assert pantheon.personas == ("maat", "lilith", "thoth")
    assert (pantheon.router.kind, pantheon.router.persona, pantheon.router.max_personas) == (
        "model", "router", 2,
    )  # fmt: skip
    assert (pantheon.aggregator, pantheon.veto, pantheon.anonymous) == ("thoth", "maat", True)
    assert (pantheon.max_rounds, pantheon.quorum, pantheon.timeout_s) == (3, 2, 30.0)
    assert pantheon.memory is not None and (pantheon.memory.embed_model, pantheon.memory.top_k) == (
        "eye", 4,
    )  # fmt: skip
    assert pantheon.roles() == ("maat", "lilith", "thoth", "router")
    assert [p.name for p in councils.members(pantheon)] == ["maat", "lilith", "thoth"]
    myth = councils.council("myth")
    assert myth is not None and myth.router.kind == "rules" and myth.memory is None
    assert [(r.match, r.personas) for r in myth.rules] == [("(?i)myth|history", ("thoth",))]
    assert councils.file_of("council.myth") == str(tmp_path / "councils" / "pantheon.toml")
    assert councils.warnings == ()


def test_quorum_defaults_to_a_majority_and_caps_at_the_personas_called() -> None:
    five = Council(name="c", personas=("a", "b", "c", "d", "e"), aggregator="a")
    assert five.effective_quorum == 3
    assert five.quorum_for(2) == 2
    assert five.quorum_for(4) == 3
    assert five.quorum_for(0) == 0
    fixed = five.model_copy(update={"quorum": 4})
    assert fixed.effective_quorum == 4
    assert fixed.quorum_for(3) == 3


def test_sampling_holds_only_the_fields_set() -> None:
    bare = Persona(name="p", model="m")
    assert bare.sampling() == {}
    full = Persona(name="p", model="m", temperature=1, top_p=0.9, max_tokens=8, seed=7,
                   stop="x", presence_penalty=-1, frequency_penalty=0.5)  # fmt: skip
    assert full.sampling() == {"temperature": 1, "top_p": 0.9, "max_tokens": 8, "seed": 7,
                               "stop": "x", "presence_penalty": -1,
                               "frequency_penalty": 0.5}  # fmt: skip


def test_every_problem_comes_at_once_naming_file_table_and_field(tmp_path: Path) -> None:
    bad = """
[persona.maat]
model = "nope"
temprature = 0.3
stop = 5

[persona.lilith]
model = "lilith"

[council.pantheon]
personas = ["maat", "lilith", "isis", "maat"]
router = { kind = "model", max_personas = 0 }
aggregator = "thot"
veto = "ra"
max_rounds = 0
quorum = 9
timeout_s = 0
memory = { embed_model = "nope" }

[[council.pantheon.rules]]
match = "(?i)myth|(history"
personas = ["ra"]

[council.empty]
personas = []
router = "rules"
"""
    file = str(tmp_path / "councils" / "bad.toml")
    found = problems_of(tmp_path, {"bad.toml": bad})
    assert {p.file for p in found} == {file}
    expected = {
        ("persona.maat", "model"): "no soulstone serves 'nope' and no LoRA adapter",
        ("persona.maat", "temprature"): "did you mean 'temperature'",
        ("persona.maat", "stop"): "a string or a list of strings, got 5",
        ("persona.lilith", "model"): "no soulstone serves 'lilith'",
        ("council.pantheon", "aggregator"): "no persona named 'thot'",
        ("council.pantheon", "veto"): "no persona named 'ra'",
        ("council.pantheon", "router.persona"): "kind 'model' needs a persona",
        ("council.pantheon", "router.max_personas"): "positive integer, got 0",
        ("council.pantheon", "max_rounds"): "at least 1), got 0",
        ("council.pantheon", "quorum"): "9 answers can never come from 3 personas",
        ("council.pantheon", "timeout_s"): "positive number of seconds, got 0",
        ("council.pantheon", "memory.embed_model"): "no soulstone serves 'nope'",
        ("council.pantheon.rules", "match"): "rule 1: '(?i)myth|(history' does not compile",
        ("council.empty", "personas"): "the list is empty",
        ("council.empty", "rules"): "router kind 'rules' needs rules",
        ("council.empty", "aggregator"): "required",
    }
    for (table, field), words in expected.items():
        assert words in one(found, table, field).message, (table, field)
    council_personas = [p.message for p in found if (p.table, p.field) == ("council.pantheon",
                                                                           "personas")]  # fmt: skip
    assert any("'isis'" in m for m in council_personas)
    assert any("'maat' is listed twice" in m for m in council_personas)
    rule_personas = one(found, "council.pantheon.rules", "personas").message
    assert "rule 1: 'ra' is not one of the council's personas" in rule_personas
    assert len(found) == len(expected) + 3  # two on the personas list, one on the rule's


def test_an_adapter_name_counts_as_a_model(tmp_path: Path) -> None:
    files = {"a.toml": '[persona.lilith]\nmodel = "lilith"\n'}
    assert councils_of(tmp_path, files, {"lilith"}).persona("lilith") is not None
    message = one(problems_of(tmp_path, files, {"lilit"}), "persona.lilith", "model").message
    assert "did you mean 'lilit'" in message and "adapters: lilit" in message


def test_names_declared_twice_across_files(tmp_path: Path) -> None:
    persona = '[persona.maat]\nmodel = "alpha"\n'
    council = '[council.c]\npersonas = ["maat"]\naggregator = "maat"\n'
    found = problems_of(tmp_path, {"a.toml": persona + council, "b.toml": persona + council})
    b = str(tmp_path / "councils" / "b.toml")
    assert one(found, "persona.maat", "").file == b
    assert "already declared in" in one(found, "council.c", "").message
    assert len(found) == 2


@pytest.mark.parametrize(
    ("text", "table", "field", "words"),
    [
        ("[personas.x]\nmodel = 'alpha'\n", "", "personas", ["did you mean 'persona'"]),
        ("persona = 3\n", "", "persona", ["[persona.NAME]"]),
        ("[persona]\nx = 3\n", "persona", "x", ["a table [persona.x]"]),
        ("[persona.'bad name']\nmodel = 'alpha'\n", "persona.bad name", "", ["malformed name"]),
        ("[persona.x]\nname = 'y'\nmodel = 'alpha'\n", "persona.x", "name", ["table's"]),
        ("[persona.x]\nsystem = 'hi'\n", "persona.x", "model", ["required"]),
        ("[persona.x]\nmodel = 'alpha'\ntemperature = 3\n", "persona.x", "temperature",
         ["from 0 to 2"]),
        ("[persona.x]\nmodel = 'alpha'\ntags = ['a', 1]\n", "persona.x", "tags", ["item 2"]),
        ("[persona.x]\nmodel = 'alpha'\nmax_tokens = '5'\n", "persona.x", "max_tokens",
         ["'5' (a string)"]),
        ("[council.c]\npersonas = ['x']\naggregator = 'x'\nmemory = true\n", "council.c",
         "memory", ["memory = true", "embed_model"]),
        ("[council.c]\npersonas = ['x']\naggregator = 'x'\nmemory = 'yes'\n", "council.c",
         "memory", ["false, or a table"]),
        ("[council.c]\npersonas = ['x']\naggregator = 'x'\nmemory = {}\n", "council.c",
         "memory.embed_model", ["required"]),
        ("[council.c]\npersonas = ['x']\naggregator = 'x'\nrouter = 'smart'\n", "council.c",
         "router.kind", ["'smart'"]),
        ("[council.c]\npersonas = ['x']\naggregator = 'x'\nrouter = {knd = 'all'}\n",
         "council.c", "router.knd", ["did you mean 'kind'"]),
        ("[council.c]\npersonas = ['x']\naggregator = 'x'\nrules = 3\n", "council.c", "rules",
         ["[[council.NAME.rules]]"]),
        ("[council.c]\npersonas = ['x']\naggregator = 'x'\nrouter = 'rules'\n"
         "[[council.c.rules]]\npersonas = ['x']\nmach = 'a'\n", "council.c.rules", "mach",
         ["rule 1: unknown key 'mach'"]),
        ("[council.c]\npersonas = ['x']\naggregator = 'x'\nanonymus = true\n", "council.c",
         "anonymus", ["did you mean 'anonymous'"]),
        ("[council.c\n", "", "", ["invalid TOML"]),
    ],
)  # fmt: skip
def test_each_kind_of_mistake(
    tmp_path: Path, text: str, table: str, field: str, words: list[str]
) -> None:
    declared = "[persona.x]\nmodel = 'alpha'\n" if "[council.c]" in text else ""
    found = problems_of(tmp_path, {"a.toml": text + declared})
    problem = one(found, table, field)
    assert problem.file == str(tmp_path / "councils" / "a.toml")
    for word in words:
        assert word in problem.message


def test_warnings_for_settings_the_router_ignores(tmp_path: Path) -> None:
    text = """
[persona.x]
model = "alpha"
[council.c]
personas = ["x"]
aggregator = "x"
router = { kind = "all", persona = "x", max_personas = 1 }
[[council.c.rules]]
match = "a"
personas = ["x"]
"""
    councils = councils_of(tmp_path, {"a.toml": text})
    assert {(w.table, w.field) for w in councils.warnings} == {
        ("council.c", "router.persona"), ("council.c", "router.max_personas"),
        ("council.c", "rules"),
    }  # fmt: skip


def test_without_a_codex_model_names_are_not_checked(tmp_path: Path) -> None:
    folder = write(tmp_path / "councils", {"a.toml": '[persona.x]\nmodel = "anything"\n'})
    assert load_councils(folder, None, set()).persona("x") is not None


def test_an_absent_default_folder_is_no_councils_but_a_named_one_must_exist(
    tmp_path: Path,
) -> None:
    paths = Paths.from_env({"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    source, named = councils_source(None, paths)
    assert source == tmp_path / "cfg" / "soulstone" / "councils" and not named
    assert load_councils(source, CODEX, set(), named=False) == Councils()
    with pytest.raises(UsageError, match="does not exist"):
        council_files(tmp_path / "nope", named=True)
    one_file = write(tmp_path / "f", {"a.toml": '[persona.x]\nmodel = "alpha"\n'}) / "a.toml"
    assert council_files(one_file, named=True) == [one_file]


def test_unreadable_text_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "councils"
    folder.mkdir()
    (folder / "a.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(CouncilError) as caught:
        load_councils(folder, CODEX, set())
    [problem] = caught.value.problems
    assert problem.file == str(folder / "a.toml") and "not UTF-8" in problem.message
    assert "1 error in the councils" in str(caught.value)
