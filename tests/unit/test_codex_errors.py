"""Every error class of the codex names its file, table and field; all come at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import PODMAN_HOST, one, problems, write
from soulstone.codex.load import load_codex
from soulstone.codex.parse import parse_text
from soulstone.errors import CodexError, UsageError

OK = 'exec = ["llama-server", "-m", "/m.gguf"]\n'


def test_unknown_key_with_did_you_mean(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f"[a]\n{OK}port = 1\nprot = 2\n"})
    found = problems(tmp_path)
    problem = one(found, "a", "prot")
    assert problem.file == str(tmp_path / "a.toml")
    assert "unknown key 'prot'" in problem.message
    assert "did you mean 'port'" in problem.message


def test_unknown_key_in_a_nested_table(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f"[a]\n{OK}port = 1\n[a.health]\nstart_timout = 3\n"})
    problem = one(problems(tmp_path), "a", "health.start_timout")
    assert "did you mean 'start_timeout'" in problem.message


def test_unknown_key_without_a_close_match(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f"[a]\n{OK}port = 1\nzzzzzz = 2\n"})
    problem = one(problems(tmp_path), "a", "zzzzzz")
    assert "did you mean" not in problem.message


@pytest.mark.parametrize(
    ("line", "field", "words"),
    [
        ('port = "8000"', "port", ["integer", "'8000'", "a string"]),
        ("port_expose = 1", "port_expose", ["true or false"]),
        ('groups = ["a", 5]', "groups", ["item 2", "5"]),
        ("exec = 5", "exec", ["list of strings or one string"]),
        ('engine = "ollama"', "engine", ["vllm", "'ollama'"]),
        ('runtime = "docker"', "runtime", ["quadlet", "process"]),
        ("env = { A = 1 }", "env", ["key 'A'", "string"]),
        ('health = { start_timeout = "soon" }', "health.start_timeout", ["seconds"]),
        ("ttl = 0", "ttl", ["positive integer"]),
        ("lora = { max_loras = 0 }", "lora.max_loras", ["positive integer"]),
        ('tool_parser = "json"', "tool_parser", ["hermes"]),
        ('warmup = "yes"', "warmup", ["true, false or a table", "'yes'"]),
        ("warmup = { max_tokens = 0 }", "warmup.max_tokens", ["positive integer"]),
        ("warmup = { prompt = 3 }", "warmup.prompt", ["a string", "3"]),
        ('warmup = { promt = "x" }', "warmup.promt", ["did you mean 'prompt'"]),
        ('warmup = { prompt = " " }', "warmup.prompt", ["empty"]),
    ],
)
def test_wrong_types(tmp_path: Path, line: str, field: str, words: list[str]) -> None:
    port = "" if line.startswith("port =") else "port = 1\n"
    command = "" if line.startswith("exec =") else OK
    write(tmp_path, {"a.toml": f"[a]\n{command}{port}{line}\n"})
    problem = one(problems(tmp_path), "a", field)
    for word in words:
        assert word in problem.message


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f"[x]\n{OK}port = 1\n", "b.toml": f"[x]\n{OK}port = 2\n"})
    found = problems(tmp_path)
    [problem] = [p for p in found if "declared twice" in p.message]
    assert problem.file == str(tmp_path / "b.toml")
    assert problem.table == "x"
    assert str(tmp_path / "a.toml") in problem.message


def test_unit_name_collision(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f"[red-x]\n{OK}port = 1\n[red.x]\n{OK}port = 2\n"})
    found = problems(tmp_path)
    [problem] = [p for p in found if "soulstone-red-x" in p.message]
    assert problem.table == "red.x"
    assert "[red-x]" in problem.message


def test_duplicate_port_across_groups_that_never_run_together(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": f"[g1.a]\n{OK}port = 8000\n",
            "b.toml": f"[g2.b]\n{OK}port = 8000\n",
        },
    )
    problem = one(problems(tmp_path), "g2.b", "port")
    assert "8000" in problem.message and "[g1.a]" in problem.message


def test_duplicate_socket(tmp_path: Path) -> None:
    write(
        tmp_path, {"a.toml": f'[a]\n{OK}socket = "/run/s.sock"\n[b]\n{OK}socket = "/run/s.sock"\n'}
    )
    assert "[a]" in one(problems(tmp_path), "b", "socket").message


def test_duplicate_model_names(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"a.toml": f'[a]\n{OK}port = 1\nmodels = ["m"]\n[b]\n{OK}port = 2\nmodels = ["x", "m"]\n'},
    )
    problem = one(problems(tmp_path), "b", "models")
    assert "'m'" in problem.message and "[a]" in problem.message


def test_default_model_name_collides_with_explicit_one(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f'[a]\n{OK}port = 1\n[b]\n{OK}port = 2\nmodels = ["a"]\n'})
    assert "'a'" in one(problems(tmp_path), "b", "models").message


def test_malformed_names_and_groups(tmp_path: Path) -> None:
    text = f'["bad name"]\n{OK}port = 1\n[ok]\n{OK}port = 2\ngroups = ["g!", "fine"]\n'
    write(tmp_path, {"a.toml": text})
    found = problems(tmp_path)
    assert "malformed name 'bad name'" in one(found, "bad name", "").message
    assert "malformed group 'g!'" in one(found, "ok", "groups").message


def test_group_named_like_a_soulstone(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f'[a]\n{OK}port = 1\n[b]\n{OK}port = 2\ngroups = ["a"]\n'})
    assert "ambiguous" in one(problems(tmp_path), "b", "groups").message


def test_unparsable_exec(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": '[a]\nport = 1\nexec = "llama-server -m \'unclosed"\n'})
    assert "closing quotation" in one(problems(tmp_path), "a", "exec").message


def test_empty_exec(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": '[a]\nport = 1\nexec = "  \\n "\n'})
    assert "empty" in one(problems(tmp_path), "a", "exec").message


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_out_of_range(tmp_path: Path, port: int) -> None:
    write(tmp_path, {"a.toml": f"[a]\n{OK}port = {port}\n"})
    assert "1 to 65535" in one(problems(tmp_path), "a", "port").message


def test_port_and_socket_both(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f'[a]\n{OK}port = 1\nsocket = "/run/a.sock"\n'})
    assert "not both" in one(problems(tmp_path), "a", "socket").message


def test_neither_port_nor_socket(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f"[a]\n{OK}"})
    assert "no address" in one(problems(tmp_path), "a", "port").message


def test_relative_or_too_long_socket(tmp_path: Path) -> None:
    long = "/" + "s" * 120
    write(tmp_path, {"a.toml": f'[a]\n{OK}socket = "rel.sock"\n[b]\n{OK}socket = "{long}"\n'})
    found = problems(tmp_path)
    assert "absolute" in one(found, "a", "socket").message
    assert "107 bytes" in one(found, "b", "socket").message


def test_missing_image_for_the_quadlet_runtime(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f'[a]\n{OK}port = 1\nruntime = "quadlet"\n'})
    assert "set image" in one(problems(tmp_path, PODMAN_HOST), "a", "image").message


def test_missing_command_for_the_process_runtime(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": '[a]\nport = 1\nimage = "x/y"\nruntime = "process"\n'
            '[b]\nport = 2\ndescription = "nothing to run"\n'
            '[c]\nport = 3\nruntime = "process"\nexec = ["--model", "m"]\n'
        },
    )
    found = problems(tmp_path)
    assert "needs exec" in one(found, "a", "exec").message
    assert "nothing to run" in one(found, "b", "exec").message
    assert "put the program first" in one(found, "c", "exec").message


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    write(tmp_path, {"bad.toml": "[a]\nport = \n", "good.toml": f"[b]\n{OK}port = 2\n"})
    found = problems(tmp_path)
    [problem] = found
    assert problem.file == str(tmp_path / "bad.toml")
    assert "line 2" in problem.message and "column 8" in problem.message


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_bytes(b'[a]\ndescription = "\xff"\n')
    [problem] = problems(tmp_path)
    assert "UTF-8" in problem.message


def test_top_level_value_and_mixed_group_table(tmp_path: Path) -> None:
    write(tmp_path, {"a.toml": f"x = 1\n[g]\ny = 1\n[g.a]\n{OK}port = 1\n"})
    found = problems(tmp_path)
    assert "must be a table" in one(found, "", "x").message
    # [g] has a plain value, so it is a soulstone, and `a` is an unknown key in it.
    assert "unknown key 'a'" in one(found, "g", "a").message


def test_other_field_formats(tmp_path: Path) -> None:
    text = (
        f'[a]\n{OK}port = 1\nvolumes = ["nocolon", "/h:relative"]\n'
        'env = { "1BAD" = "x" }\ncapabilities = ["has space"]\nmodels = []\n'
        'health = { path = "health" }\nlora = { max_loras = 4, max_cpu_loras = 2 }\n'
        '[b]\nsocket = "/run/b.sock"\nport_expose = true\nexec = ["x"]\n'
        '[c]\nport = 3\nexec = ["x"]\nmodels = ["council/x", "m m"]\n'
    )
    write(tmp_path, {"a.toml": text})
    found = problems(tmp_path)
    volumes = [p for p in found if p.table == "a" and p.field == "volumes"]
    assert len(volumes) == 2
    assert "1BAD" in one(found, "a", "env").message
    assert "has space" in one(found, "a", "capabilities").message
    assert "empty" in one(found, "a", "models").message
    assert "start with '/'" in one(found, "a", "health.path").message
    assert "max_loras" in one(found, "a", "lora.max_cpu_loras").message
    assert "no port" in one(found, "b", "port_expose").message
    c_models = [p.message for p in found if p.table == "c" and p.field == "models"]
    assert any("reserved" in m for m in c_models) and any("'m m'" in m for m in c_models)


def test_many_errors_in_one_codex_are_all_reported(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.toml": f'[a]\n{OK}port = 70000\nprot = 1\n[b]\n{OK}port = "x"\n',
            "b.toml": "[c]\nport = \n",
            "c.toml": f"[d]\n{OK}port = 5\n[e]\n{OK}port = 5\n",
        },
    )
    with pytest.raises(CodexError) as caught:
        load_codex([tmp_path], PODMAN_HOST, read_models=lambda _r: None)
    found = caught.value.problems
    where = {(Path(p.file).name, p.table, p.field) for p in found}
    assert {
        ("a.toml", "a", "port"),
        ("a.toml", "a", "prot"),
        ("a.toml", "b", "port"),
        ("b.toml", "", ""),
        ("c.toml", "e", "port"),
    } <= where
    assert len(found) == 5
    assert "5 errors" in str(caught.value)


def test_parse_two_dot_rule_and_groups_together() -> None:
    declarations, found = parse_text(
        '[logic.alpha]\nport = 1\ngroups = ["extra"]\n[solo]\nport = 2\n[solo.env]\nA = "b"\n',
        "x.toml",
    )
    assert found == []
    assert [(d.id, d.group) for d in declarations] == [("logic.alpha", "logic"), ("solo", None)]


def test_missing_named_codex_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_codex([tmp_path / "nope"], PODMAN_HOST)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CodexError) as caught:
        load_codex([tmp_path], PODMAN_HOST)
    assert "soulstone init" in caught.value.problems[0].message
