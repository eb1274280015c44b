"""Every way a model fails to load is one line and exit 2, with the hint that fixes it (CLI)."""

import shutil
import socket
import subprocess
import sys

import pytest

from musicrl.model.hub import TINY_DIR


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "musicrl.cli", *args], capture_output=True, text=True, timeout=300)


def one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert len(lines) == 1 and "error:" in lines[0], r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """Copies of the tiny MusicGen: one with torn weights, one without its tokenizer."""
    root = tmp_path_factory.mktemp("broken")
    torn, no_tokenizer = root / "torn", root / "no-tokenizer"
    shutil.copytree(TINY_DIR / "musicgen", torn)
    (torn / "model.safetensors").write_bytes((TINY_DIR / "musicgen" / "model.safetensors").read_bytes()[:100_000])
    shutil.copytree(TINY_DIR / "musicgen", no_tokenizer)
    for f in ("tokenizer_config.json", "added_tokens.json"):
        (no_tokenizer / f).unlink()
    return torn, no_tokenizer


def test_a_file_is_not_a_model(tmp_path):
    (tmp_path / "README.md").write_text("# not a model\n")
    one_line_error(run_cli("generate", "calm piano", "--model", str(tmp_path / "README.md"), "--out", str(tmp_path)),
                   "is a file, not a model")  # fmt: skip


def test_torn_weights_and_a_missing_tokenizer(broken, tmp_path):
    torn, no_tokenizer = broken
    one_line_error(run_cli("generate", "calm piano", "--model", str(torn), "--out", str(tmp_path)),
                   "weights are damaged", "copy or download them again")  # fmt: skip
    one_line_error(run_cli("generate", "calm piano", "--model", str(no_tokenizer), "--out", str(tmp_path)),
                   "has no tokenizer")  # fmt: skip


def test_an_unreachable_hub_id_names_the_hf_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    line = one_line_error(run_cli("generate", "calm piano", "--model", "facebook/musicgen-small", "--out", str(tmp_path)),
                          "`hf download facebook/musicgen-small")  # fmt: skip
    assert "huggingface-cli" not in line


def test_a_busy_port_is_found_before_any_model_loads(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("app", "--port", str(port), "--data-dir", str(tmp_path), "--model", str(tmp_path / "no-such-model"))
    # the port is checked first: the missing model would be the error otherwise
    one_line_error(r, f"cannot listen on 127.0.0.1:{port}", "--port")
