import torch

from musicrl.model.sampling import SamplingConfig, gumbel_noise, process_logits, sample_tokens


def test_gumbel_noise_is_a_pure_function_of_seed_step_codebook_token():
    a = gumbel_noise(torch.tensor([3, 4]), step=5, num_codebooks=4, vocab=32)
    b = gumbel_noise(torch.tensor([4]), step=5, num_codebooks=4, vocab=32)
    assert torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, gumbel_noise(torch.tensor([3, 4]), step=6, num_codebooks=4, vocab=32))


def test_gumbel_max_samples_the_distribution():
    """Empirical frequencies over many seeds match the target probabilities (chi-square style bound)."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logp = probs.log().expand(4000, 1, 4)
    seeds = torch.arange(4000)
    draws = sample_tokens(logp, seeds, step=0)[:, 0]
    freq = torch.bincount(draws, minlength=4).float() / 4000
    assert (freq - probs).abs().max() < 0.03


def test_process_logits_guidance_temperature_topk_topp():
    cond = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    uncond = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    lp = process_logits(cond, uncond, SamplingConfig(guidance_scale=3.0, top_k=0, temperature=2.0))
    expected = ((uncond + 3.0 * (cond - uncond)) / 2.0).log_softmax(-1)
    torch.testing.assert_close(lp, expected)
    lp = process_logits(cond, None, SamplingConfig(guidance_scale=1.0, top_k=2))
    assert torch.isinf(lp[0, 2:]).all() and torch.isfinite(lp[0, :2]).all()
    # top-p: probabilities of [2,1,0,-1] are ~[.64,.24,.09,.03]; p=0.8 keeps the first two
    lp = process_logits(cond, None, SamplingConfig(guidance_scale=1.0, top_k=0, top_p=0.8))
    assert torch.isfinite(lp[0]).tolist() == [True, True, False, False]
