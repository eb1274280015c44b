"""What the RL and DPO trainers share (musicrl.train.tuning): gradient checkpointing in their eval mode."""

import pytest
import torch

from musicrl.model.policy import MusicGenPolicy
from musicrl.model.sampling import SamplingConfig
from musicrl.train import tuning
from musicrl.train.rl_config import RLConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _forward_backward(model_dir, checkpointing: bool, lora: int):
    """Log-probs of fixed codes, the gradients they give, and how often each layer's MLP ran."""
    torch.manual_seed(0)
    policy = MusicGenPolicy.from_pretrained(str(model_dir))
    cfg = RLConfig(model=str(model_dir), reward={"components": {"clap": {}}}, gradient_checkpointing=checkpointing, lora_rank=lora)
    tuning.prepare_policy(policy, cfg, torch.device("cpu"))
    tuning.eval_mode(policy)  # as the trainers run
    runs = []
    layers = [m for n, m in policy.model.decoder.named_modules() if n.endswith("fc1")]
    for m in layers:
        m.register_forward_hook(lambda *_: runs.append(1))
    codes = torch.randint(0, 64, (2, 4, 12))  # [B, K, T]
    _, logp = tuning.teacher_forced(policy, ["fast bright piano", "slow dark organ"], codes, SamplingConfig(guidance_scale=3.0, top_k=0))
    logp.sum().backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    return logp.detach(), grads, len(runs) / len(layers)


@pytest.mark.parametrize("lora", [0, 4])
def test_gradient_checkpointing_recomputes_the_layers_and_changes_no_number(random_musicgen_dir, lora):
    """transformers only checkpoints layers in training mode, and the trainers run in eval mode (no
    dropout): with checkpointing on, each layer now runs again in the backward pass, and the log-probs
    and gradients are those of the run without it (full fine-tuning and LoRA)."""
    logp, grads, runs = _forward_backward(random_musicgen_dir, False, lora)
    logp_ck, grads_ck, runs_ck = _forward_backward(random_musicgen_dir, True, lora)
    assert runs == 1 and runs_ck == 2  # (one batched pass holds the guided and the unguided rows)
    torch.testing.assert_close(logp_ck, logp, rtol=0, atol=1e-6)
    assert grads_ck.keys() == grads.keys() and len(grads) > 0
    for n in grads:
        torch.testing.assert_close(grads_ck[n], grads[n], rtol=1e-5, atol=1e-7)


def test_without_per_layer_checkpointing_the_decoder_is_the_checkpointed_module(random_musicgen_dir, monkeypatch):
    """transformers 4.x has no GradientCheckpointingLayer: there the decoder's own loop checkpoints its
    layers while the decoder's training flag is set, so it is the module eval_mode flags."""
    import sys

    policy = MusicGenPolicy.from_pretrained(str(random_musicgen_dir))
    cfg = RLConfig(model=str(random_musicgen_dir), reward={"components": {"clap": {}}}, gradient_checkpointing=True)
    tuning.prepare_policy(policy, cfg, torch.device("cpu"))
    layers = tuning.checkpointed_layers(policy)
    decoder = policy.model.decoder.model.decoder  # MusicgenForCausalLM -> MusicgenDecoder
    assert layers and decoder not in layers  # this transformers: the layers checkpoint themselves
    monkeypatch.setitem(sys.modules, "transformers.modeling_layers", None)  # the import fails, as on 4.x
    assert decoder in tuning.checkpointed_layers(policy)
    tuning.eval_mode(policy)
    assert decoder.training and not decoder.layers[0].self_attn.training  # its children keep eval mode
