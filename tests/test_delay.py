import torch

from musicrl.model import delay as dp


def test_delay_round_trip_and_layout():
    codes = torch.randint(0, 100, (3, 4, 7))
    d = dp.delay(codes, pad_id=100)
    assert d.shape == (3, 4, 10)
    assert torch.equal(dp.undelay(d), codes)
    # codebook k starts k steps late; everything outside its window is pad
    valid = dp.valid_mask(4, 7)
    assert torch.equal(d[:, ~valid], torch.full_like(d[:, ~valid], 100))
    for k in range(4):
        assert torch.equal(d[:, k, k : k + 7], codes[:, k])


def test_undelay_carries_trailing_dims():
    x = torch.randn(2, 4, 9, 5)  # [B, K, T+K-1, V]
    y = dp.undelay(x)
    assert y.shape == (2, 4, 6, 5)
    assert torch.equal(y[:, 2, 0], x[:, 2, 2])


def test_matches_transformers_delay_pattern(random_policy):
    """Our layout is the one transformers' MusicGen builds (BOS column + delayed codes)."""
    dec = random_policy.model.decoder
    K, T, pad = random_policy.num_codebooks, 6, random_policy.pad_id
    codes = torch.randint(0, random_policy.vocab_size, (2, K, T))
    prompt = torch.cat([torch.full((2, K, 1), pad), codes], dim=-1).reshape(2 * K, T + 1)
    _, pattern = dec.build_delay_pattern_mask(prompt, pad_token_id=pad, max_length=T + K)
    # transformers' pattern puts the BOS at position 0 and prompt token t of codebook k at t + k
    ours = torch.cat([torch.full((2, K, 1), pad), dp.delay(codes, pad)], dim=-1)
    theirs = pattern.reshape(2, K, T + K)
    assert torch.equal(ours, theirs)
    inputs, targets = dp.decoder_inputs(codes, pad, pad)
    assert torch.equal(inputs[..., 1:], targets[..., :-1])
    assert (inputs[..., 0] == pad).all()
