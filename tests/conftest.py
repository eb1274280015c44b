import os

import pytest
import torch

# Under pytest-xdist (`./dev test` runs one worker per core) each worker keeps to one thread:
# two workers with two threads each on two cores spin at barriers and run many times slower.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """MUSICRL_FAST=1: skip the tests marked slow (the same as `-m "not slow"`)."""
    if os.environ.get("MUSICRL_FAST") != "1":
        return
    skip = pytest.mark.skip(reason="MUSICRL_FAST=1 skips slow tests")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def random_musicgen_dir(tmp_path_factory):
    """A randomly initialised tiny MusicGen (with a random tiny EnCodec), saved like a real checkpoint."""
    from musicrl.tiny.musicgen import save_random

    return save_random(tmp_path_factory.mktemp("random_musicgen"))


@pytest.fixture(scope="session")
def random_policy(random_musicgen_dir):
    from musicrl.model.policy import MusicGenPolicy

    return MusicGenPolicy.from_pretrained(str(random_musicgen_dir))


@pytest.fixture(scope="module")
def one_thread():
    """Small matmuls on a shared 2-core box: a second thread spins at barriers (40x slower).
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def heldout_words():
    """Every held-out word and phrase of the synthetic captions (the tiny LM never learned them)."""
    from musicrl.tiny import synth

    return [w for table in (synth.SYNONYMS, synth.PHRASES) for values in table.values()
            for words in values.values() for w in words.get("heldout", ())]
