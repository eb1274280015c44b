"""Weight deltas (musicrl.model.delta) and the shipped `tiny-r`, which is one."""

import json
from pathlib import Path

import pytest
import torch

from musicrl.errors import UserError
from musicrl.model import delta
from musicrl.model.hub import TINY_DIR
from musicrl.model.policy import MusicGenPolicy

pytestmark = pytest.mark.usefixtures("one_thread")
REFERENCE = Path(__file__).parent / "data" / "tiny_r_reference.json"


def test_a_delta_loads_as_its_base_plus_the_changed_tensors(random_musicgen_dir, tmp_path):
    base = MusicGenPolicy.from_pretrained(str(random_musicgen_dir))
    tuned = MusicGenPolicy.from_pretrained(str(random_musicgen_dir))
    with torch.no_grad():
        for p in tuned.model.decoder.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    manifest = delta.write_delta(base.model, tuned.model, tmp_path / "d", str(random_musicgen_dir))
    assert manifest["tensors"] == len(list(tuned.model.decoder.parameters()))  # only what changed is stored
    assert delta.base_of(tmp_path / "d") == str(random_musicgen_dir) and delta.base_of(random_musicgen_dir) is None
    loaded = MusicGenPolicy.from_pretrained(str(tmp_path / "d")).model.state_dict()
    for name, want in tuned.model.state_dict().items():
        if name.startswith("decoder."):
            assert torch.allclose(loaded[name], want, atol=5e-6), name  # fp16 holds a ~1e-3 step to ~1e-6
        else:
            assert torch.equal(loaded[name], want), name  # untouched: the base's own tensors


def test_a_broken_delta_is_a_one_line_error(random_musicgen_dir, tmp_path):
    (tmp_path / delta.MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="cannot read the weight delta"):
        MusicGenPolicy.from_pretrained(str(tmp_path))
    (tmp_path / delta.MANIFEST).write_text(json.dumps({"base": str(random_musicgen_dir)}))
    (tmp_path / delta.TENSORS).write_bytes(b"\x00" * 40)
    with pytest.raises(UserError, match="cannot read the weight delta"):
        MusicGenPolicy.from_pretrained(str(tmp_path))


@pytest.mark.skipif(not (TINY_DIR / "musicgen-r" / delta.MANIFEST).exists(), reason="tiny-r is not shipped here")
def test_tiny_r_samples_what_its_checkpoint_sampled():
    """The shipped delta reproduces the MusicRL-R checkpoint's own samples (written by
    experiments/ship_tiny_r.py from runs/r-clapfine/checkpoints/step-000240) token for token."""
    ref = json.loads(REFERENCE.read_text())
    policy = MusicGenPolicy.from_pretrained("tiny-r")
    with torch.no_grad():
        codes = policy.sample(ref["prompts"], ref["samples"], ref["duration_s"], seed=ref["seed"]).codes
        base = MusicGenPolicy.from_pretrained("tiny").sample(ref["prompts"], ref["samples"], ref["duration_s"],
                                                             seed=ref["seed"]).codes  # fmt: skip
    assert codes.tolist() == ref["codes"]
    assert (base != codes).float().mean() > 0.1  # and it is not the base model
