"""The fast rollout engine is a drop-in for `MusicGenPolicy.sample`: same tokens, same log-probs."""

import copy

import pytest
import torch

from musicrl.model.engine import FastSampler
from musicrl.errors import UserError
from musicrl.model.sampling import SamplingConfig, gumbel_chunk, gumbel_noise, hash32, kth_largest, token_hash

PROMPTS = ["fast happy piano in a major key", "slow dark organ, low register"]
CONFIGS = [
    SamplingConfig(top_k=20, guidance_scale=1.0),
    SamplingConfig(top_k=250, guidance_scale=3.0),
    SamplingConfig(top_k=0, top_p=0.9, guidance_scale=3.0, temperature=0.8),
    SamplingConfig(top_k=0, top_p=0.8, guidance_scale=1.0),
]
IDS = ["topk-g1", "topk250-g3", "topp-g3-temp", "topp-g1"]


@pytest.mark.parametrize("sampling", CONFIGS, ids=IDS)
def test_same_tokens_and_log_probs_as_the_reference(random_policy, sampling):
    ref = random_policy.sample(PROMPTS, num_samples=2, num_frames=12, sampling=sampling, seed=7)
    fast = FastSampler(random_policy).sample(PROMPTS, num_samples=2, num_frames=12, sampling=sampling, seed=7)
    assert fast.prompts == ref.prompts and torch.equal(fast.seeds, ref.seeds)
    assert torch.equal(fast.codes, ref.codes)
    torch.testing.assert_close(fast.log_probs, ref.log_probs, atol=1e-4, rtol=0)
    teacher = random_policy.log_probs(fast.prompts, fast.codes, sampling)
    torch.testing.assert_close(fast.log_probs, teacher, atol=1e-4, rtol=0)


def test_graph_path_matches_eager_across_buckets_and_calls(random_policy):
    """The CUDA-graph code path (static buffers, masked cache buckets, device-side position), run eagerly."""
    sampling = SamplingConfig(top_k=30, guidance_scale=3.0)
    static = FastSampler(random_policy, graph=True, bucket=4)  # 11 steps -> 3 buckets
    for seed in (3, 4):  # the second call reuses the kept state
        ref = random_policy.sample(PROMPTS, num_frames=8, sampling=sampling, seed=seed)
        out = static.sample(PROMPTS, num_frames=8, sampling=sampling, seed=seed)
        assert torch.equal(out.codes, ref.codes)
        torch.testing.assert_close(out.log_probs, ref.log_probs, atol=1e-4, rtol=0)


def test_a_failed_automatic_graph_capture_falls_back_to_eager_with_a_warning(random_policy, monkeypatch):
    """On CUDA the graph path is the default; if its capture fails there, a run must go on eagerly
    (same tokens), warned once. Asked for explicitly (graph=True), the error is raised."""
    sampling = SamplingConfig(top_k=30, guidance_scale=3.0)
    ref = random_policy.sample(PROMPTS, num_frames=6, sampling=sampling, seed=3)

    def broken(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing\n(details)")

    auto = FastSampler(random_policy)  # graph=None: the automatic choice
    monkeypatch.setattr(auto, "_use_graph", lambda dev: auto.graph is None)  # as on CUDA
    monkeypatch.setattr(auto, "_run_static", broken)
    with pytest.warns(UserWarning, match="CUDA-graph decoding failed .operation not permitted"):
        out = auto.sample(PROMPTS, num_frames=6, sampling=sampling, seed=3)
    assert torch.equal(out.codes, ref.codes) and auto.graph is False
    assert torch.equal(auto.sample(PROMPTS, num_frames=6, sampling=sampling, seed=3).codes, ref.codes)

    explicit = FastSampler(random_policy, graph=True)
    monkeypatch.setattr(explicit, "_run_static", broken)
    with pytest.raises(RuntimeError, match="stream is capturing"):
        explicit.sample(PROMPTS, num_frames=6, sampling=sampling, seed=3)


def test_batch_of_n_equals_n_singles(random_policy):
    sampling = SamplingConfig(top_k=50, guidance_scale=3.0)
    engine = FastSampler(random_policy)
    batch = engine.sample(PROMPTS, num_samples=2, num_frames=8, sampling=sampling, seed=11)
    for i, prompt in enumerate(batch.prompts):
        single = engine.sample([prompt], num_frames=8, sampling=sampling, seed=11 + i)
        assert torch.equal(single.codes[0], batch.codes[i])
        torch.testing.assert_close(single.log_probs[0], batch.log_probs[i], atol=1e-4, rtol=0)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph-path"])
def test_weights_changed_in_place_are_seen_by_the_next_call(random_policy, graph):
    sampling = SamplingConfig(top_k=0, guidance_scale=3.0)
    engine = FastSampler(random_policy, graph=graph)
    before = engine.sample(PROMPTS, num_frames=8, sampling=sampling, seed=1)
    params = list(random_policy.model.decoder.parameters())
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():  # an optimizer step, in place
            for p in params:
                p.add_(torch.randn_like(p) * 0.05)
        after = engine.sample(PROMPTS, num_frames=8, sampling=sampling, seed=1)
        ref = random_policy.sample(PROMPTS, num_frames=8, sampling=sampling, seed=1)
        assert torch.equal(after.codes, ref.codes)
        assert not torch.equal(after.codes, before.codes)
        teacher = random_policy.log_probs(after.prompts, after.codes, sampling)
        torch.testing.assert_close(after.log_probs, teacher, atol=1e-4, rtol=0)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


@pytest.mark.slow  # importing peft alone takes ~7 s of CPU here
def test_lora_wrapped_decoder_with_adapters_on_and_off(random_policy):
    peft = pytest.importorskip("peft")
    pol = copy.deepcopy(random_policy)
    targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    pol.model.decoder = peft.get_peft_model(pol.model.decoder, peft.LoraConfig(r=4, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): make the adapters matter
        for name, p in pol.model.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    pol.eval()
    sampling = SamplingConfig(top_k=40, guidance_scale=3.0)
    engine = FastSampler(pol, graph=True)  # the kept-state path, where toggling adapters must not write into weights
    on = engine.sample(PROMPTS, num_frames=6, sampling=sampling, seed=2)
    assert torch.equal(on.codes, pol.sample(PROMPTS, num_frames=6, sampling=sampling, seed=2).codes)
    with pol.model.decoder.disable_adapter():
        off = engine.sample(PROMPTS, num_frames=6, sampling=sampling, seed=2)
        assert torch.equal(off.codes, random_policy.sample(PROMPTS, num_frames=6, sampling=sampling, seed=2).codes)
    again = engine.sample(PROMPTS, num_frames=6, sampling=sampling, seed=2)
    assert torch.equal(again.codes, on.codes) and not torch.equal(on.codes, off.codes)


def test_bf16_runs_and_stays_close_to_fp32(random_policy):
    sampling = SamplingConfig(top_k=0, guidance_scale=3.0)
    out = FastSampler(random_policy, dtype=torch.bfloat16).sample(PROMPTS, num_frames=8, sampling=sampling, seed=0)
    assert torch.isfinite(out.log_probs).all() and (out.log_probs <= 0).all()
    teacher = random_policy.log_probs(out.prompts, out.codes, sampling)  # fp32
    assert (out.log_probs - teacher).abs().mean() < 0.05


def test_kth_largest_is_topks_threshold_and_chunked_noise_is_per_step_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 256, generator=g)
    for k in (1, 5, 100, 128, 129, 250, 256):  # both the topk and the kthvalue path
        assert torch.equal(kth_largest(x, k), torch.topk(x, k, dim=-1).values[..., -1:]), k
    seeds = torch.tensor([0, 5, 2**40 + 3])
    chunk = gumbel_chunk(hash32(seeds), token_hash(4, 256), torch.arange(3, 6))  # [3 steps, B, K, V]
    for i, step in enumerate(range(3, 6)):
        assert torch.equal(chunk[i], gumbel_noise(seeds, step, 4, 256))


def test_bad_requests_are_user_errors(random_policy):
    engine = FastSampler(random_policy)
    with pytest.raises(UserError):
        engine.sample([], num_frames=4)
    with pytest.raises(UserError):
        engine.sample(PROMPTS, num_samples=0, num_frames=4)
    with pytest.raises(UserError):
        engine.sample(PROMPTS, duration_s=random_policy.max_duration_s + 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_match_the_reference(random_musicgen_dir):
    from musicrl.model.policy import MusicGenPolicy

    pol = MusicGenPolicy.from_pretrained(str(random_musicgen_dir), device="cuda")
    sampling = SamplingConfig(top_k=50, guidance_scale=3.0)
    engine = FastSampler(pol, bucket=8)
    for seed in (0, 1):  # capture, then replay the kept graphs
        out = engine.sample(PROMPTS, num_samples=2, num_frames=20, sampling=sampling, seed=seed)
        ref = pol.sample(PROMPTS, num_samples=2, num_frames=20, sampling=sampling, seed=seed)
        assert (out.codes == ref.codes).float().mean() > 0.99  # TF32/kernel choice may flip a rare near-tie
        teacher = pol.log_probs(out.prompts, out.codes, sampling)
        torch.testing.assert_close(out.log_probs, teacher, atol=1e-3, rtol=0)
