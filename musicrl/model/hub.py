"""Where models come from: the shipped `tiny` world, a local directory, a hub cache's folder, or a hub id.

A local directory is a model in transformers format, or a hub cache's folder for one repository
(`HF_HOME/hub/models--org--name`, as `hf download` and `from_pretrained` leave it, copied from a
connected machine): its snapshot is used (`snapshot`). A hub id is looked up in the local cache
(`HF_HOME`) first. One place turns a failed load into a one-line `UserError` that says how to point
at a local copy, since our machines (and many users' GPU boxes) cannot reach a model hub.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

from safetensors import SafetensorError

from musicrl.errors import UserError

TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"
# The shipped models by name -> the suffix of their directory under TINY_DIR/<component>: `tiny` is the
# tiny world; `tiny-r` its MusicRL-R fine-tune, shipped as a weight delta (musicrl.model.delta, model card
# in assets/tiny/musicgen-r/README.md).
SHIPPED = MappingProxyType({"tiny": "", "tiny-r": "-r"})
_REBUILD = MappingProxyType({"tiny": "rebuild it with `musicrl bootstrap tiny`",
                             "tiny-r": "reinstall musicrl (only the tiny-r MusicGen is shipped)"})  # fmt: skip


def resolve(name: str | Path, component: str) -> str:
    """'tiny' -> the shipped tiny `component` dir; an existing dir -> itself; else a hub id as given."""
    name = str(name)
    if name in SHIPPED:
        path = TINY_DIR / (component + SHIPPED[name])
        if not (path / "config.json").exists() and not (path / "delta.json").exists():
            raise UserError(f"the {name} {component} model is missing at {path}; {_REBUILD[name]}")
        return str(path)
    if Path(name).expanduser().is_dir():
        return str(snapshot(Path(name).expanduser()))
    if Path(name).expanduser().exists():
        raise UserError(f"{name} is a file, not a model: pass the directory that holds the model's config.json "
                        f"and weights, 'tiny', or a hub id")  # fmt: skip
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"no such model directory: {name}")
    return name


def snapshot(path: Path) -> Path:
    """A hub cache's repository folder (`models--org--name`, holding `snapshots/<revision>/`) -> the
    snapshot that `refs/main` names, else its newest one; any other directory -> itself."""
    snapshots = path / "snapshots"
    if not path.name.startswith("models--") or not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    named = snapshots / ref.read_text().strip() if ref.is_file() else None
    if named is not None and named.is_dir():
        return named
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"{path} is a hub cache folder without a snapshot; download the model again")
    return found[-1]


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the model hub's endpoint answers a TCP connect: fail fast instead of minutes of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


# One of these in a model directory is its tokenizer (transformers builds an empty default one without them).
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def check_tokenizer(path: str | Path) -> None:
    """A local model directory must hold its tokenizer; a one-line error says so."""
    p = Path(path)
    if p.is_dir() and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{p} has no tokenizer (neither {' nor '.join(TOKENIZER_FILES)}): copy the tokenizer "
                        f"files of the model it came from into it (`save_pretrained` writes them)")  # fmt: skip


def load(loader: Callable[..., Any], name: str | Path, component: str, **kwargs) -> Any:
    """Call `loader(resolved, **kwargs)` (a `from_pretrained`), with a one-line error on failure.

    A hub id is looked up in the local cache first, and on the hub only if it answers.
    """
    path = resolve(name, component)
    local, online = Path(path).is_dir(), False
    try:
        if local:
            return loader(path, **kwargs)
        try:
            return loader(path, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            online = hub_reachable()
            if not online:
                raise
            return loader(path, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, (RuntimeError, SafetensorError)) and local:  # a torn copy, a wrong shape
            raise UserError(f"cannot load {component} from {path}: its weights are damaged or do not fit its "
                            f"config ({first[:200]}); copy or download them again") from None
        if isinstance(e, RuntimeError):
            raise
        if local or online:
            raise UserError(f"cannot load {component} from {path}: {first}") from e
        raise UserError(
            f"cannot load {component} '{name}': not a local directory and the model hub is unreachable; "
            f"download it on a connected machine (`hf download {name}`, then copy its HF_HOME/hub/"
            f"models--{name.replace('/', '--')} folder here and pass that folder, or set HF_HOME to the copy)"
        ) from e
