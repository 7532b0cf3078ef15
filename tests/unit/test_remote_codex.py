"""Remote soulstones in the codex (SPEC C12): addresses, keys by reference only, no conflicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load, one, problems, write
from soulstone.codex.remote import RemoteAddress, parse_remote
from soulstone.runtimes.remote import RemoteKeyError, read_key

REMOTE = '[far]\nremote = "https://gpu.example:8443/v1"\nkey_env = "FAR_KEY"\nmodels = ["big"]\n'
LOCAL = '[near]\nexec = "llama-server -m m.gguf"\nport = 8080\n'


def test_address_forms() -> None:
    https = parse_remote("https://gpu.example:8443/v1/")
    assert https == RemoteAddress("https", "gpu.example", 8443, None, "/v1")
    assert https.path_for("/v1/chat/completions") == "/v1/chat/completions"
    assert https.path_for("/tokenize") == "/tokenize"
    assert https.host_header == "gpu.example:8443"
    prefixed = parse_remote("http://box/team/v1")
    assert isinstance(prefixed, RemoteAddress)
    assert prefixed.port == 80 and prefixed.host_header == "box"
    assert prefixed.path_for("/v1/models") == "/team/v1/models"
    assert prefixed.path_for("/health") == "/team/health"
    unix = parse_remote("http+unix://%2Frun%2Fss%2Fapi.sock/v1")
    assert isinstance(unix, RemoteAddress) and unix.socket == "/run/ss/api.sock"
    assert unix.display() == "http+unix://%2Frun%2Fss%2Fapi.sock/v1"


@pytest.mark.parametrize("text", ["ftp://x/v1", "http:///v1", "http+unix://relative.sock/v1",
                                  "http://h/v1?key=1"])  # fmt: skip
def test_bad_addresses(text: str) -> None:
    assert isinstance(parse_remote(text), str)


def test_a_remote_resolves_without_conflicts(tmp_path: Path) -> None:
    codex = load(write(tmp_path, {"a.toml": REMOTE + LOCAL}))
    far = codex.get("far")
    assert far is not None and far.runtime == "remote" and far.engine == "generic"
    assert far.uri == "https://gpu.example:8443/v1" and far.models == ("big",)
    assert codex.conflicts == ()  # the solitary local engine stops nothing remote
    assert any(w.table == "far" and "/tokenize" in w.message for w in codex.warnings)


def test_discover_mode(tmp_path: Path) -> None:
    text = '[far]\nremote = "http://10.0.0.2:8080/v1"\nmodels = "discover"\n'
    far = load(write(tmp_path, {"a.toml": text})).get("far")
    assert far is not None and far.discover and far.models == ()
    found = problems(write(tmp_path / "b", {"b.toml": LOCAL + 'models = "discover"\n'}))
    assert "remote" in one(found, "near", "models").message


def test_a_literal_key_and_local_fields_are_refused(tmp_path: Path) -> None:
    text = ('[far]\nremote = "https://u:hunter2@h/v1"\nkey = "sk-literal"\nport = 80\n'
            'key_file = "/k"\nkey_env = "K"\n')  # fmt: skip
    found = problems(write(tmp_path, {"a.toml": text}))
    assert "literal key is refused" in one(found, "far", "key").message
    assert "credentials" in one(found, "far", "remote").message
    assert "runs elsewhere" in one(found, "far", "port").message
    assert "not both" in one(found, "far", "key_env").message
    assert all("hunter2" not in p.message and "sk-literal" not in p.message for p in found)
    local = problems(write(tmp_path / "b", {"b.toml": LOCAL + 'key_file = "/k"\n'}))
    assert "remote soulstone" in one(local, "near", "key_file").message


def test_check_refuses_a_literal_key(tmp_path: Path) -> None:
    folder = write(tmp_path, {"a.toml": REMOTE + 'api_key = "sk-literal"\n'})
    script = Path(sys.executable).parent / "soulstone"
    done = subprocess.run([str(script), "--codex", str(folder), "check"], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1
    assert "[far] api_key: a literal key is refused" in done.stdout + done.stderr
    assert "sk-literal" not in done.stdout + done.stderr


def test_key_file_is_checked_like_clients_yaml(tmp_path: Path) -> None:
    key_file = tmp_path / "far.key"
    key_file.write_text("sk-remote\n")
    key_file.chmod(0o600)
    far = load(write(tmp_path / "c", {"a.toml": REMOTE.replace(
        'key_env = "FAR_KEY"', f'key_file = "{key_file}"')})).get("far")  # fmt: skip
    assert far is not None and read_key(far) == "sk-remote"
    key_file.chmod(0o640)
    with pytest.raises(RemoteKeyError, match="wider than 0600") as refused:
        read_key(far)
    assert "sk-remote" not in str(refused.value)
