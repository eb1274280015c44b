"""A fast rollout engine for the MusicGen decoder: a drop-in for `MusicGenPolicy.sample`.

Why: the reference loop (`MusicGenPolicy.sample`) drives transformers' decoder through its
generic forward (DynamicCache growth by concatenation, mask construction, output dataclasses,
hooks) once per step. With a small model or a small batch that bookkeeping, not arithmetic,
is the cost. This engine runs the same network with its own loop:

- the decoder's weights are read where they live at every call (no copy in fp32, so a policy
  being trained is always current; LoRA adapters of a peft-wrapped decoder are folded in per
  call, see `_linear_weight`);
- a preallocated static KV cache [layers, 2, N, heads, T_max, head_dim];
- cross-attention K/V computed once from the text states; unconditional rows (zero states)
  skip cross-attention, whose output there is exactly zero (no biases: K = V = 0);
- one step function: embedding sum + sinusoidal position, pre-LN layers (single-query attention
  as two bmm's over views of the cache made once per call, residual adds fused into addmm, weights
  as transposed views: on a CPU at batch 8 a step is ~270 small ops, so dispatch counts), all K
  heads as one matmul, then the sampling distribution (`musicrl.model.sampling.process_logits`,
  the very function teacher forcing uses) and its counter-based Gumbel noise (`gumbel_chunk`, drawn
  for several steps at once, or with the step as a tensor on the graph path);
- CFG as one batched pass over [cond; uncond] rows, as the reference.

Because the sampler is counter-based (a sample depends on (seed, step, codebook, token) only),
the engine draws the SAME tokens as the reference for the same seed whenever the logits agree
to rounding (fp32: in practice always). Log-probs are always those of the distribution the
tokens were drawn from.

On CUDA the step is captured as CUDA graphs (one per cache-length bucket, the cache read up
to the bucket with a mask), replayed with no host work per step; `compile=True` additionally
puts the step through `torch.compile` before capture (it implies this static path, whose shapes
are fixed per bucket; on CPU it compiled in ~3 min here and ran slower than eager, so it is off
by default everywhere). bf16: pass `dtype=torch.bfloat16`, or
call inside `torch.autocast(...)` (its dtype is used): matmul weights are cast once per call,
the residual stream and layer norms stay fp32, as under autocast.

Dropout is never applied (the reference applies it only if the decoder is left in training
mode, which the RL trainer never does when sampling).

`sample(..., mixture=Mixture(reference, coef))` draws each token from the normalised geometric
mixture pi^(1-coef) * ref^coef of the policy's and a reference's sampling distributions (Nash-MD's
second sample): the reference runs its own step beside the policy's, on the same tokens, and the
two log-probs are mixed (`musicrl.model.sampling.geometric_mixture`) before the Gumbel draw. It
decodes eagerly (no CUDA graphs).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from musicrl.model import delay as dp
from musicrl.errors import UserError
from musicrl.model.policy import MusicGenPolicy, Rollout
from musicrl.model.sampling import SamplingConfig, geometric_mixture, gumbel_chunk, hash32, process_logits, token_hash


# ---- the network's weights, resolved per call ---------------------------------------------------
@dataclass
class _Layer:
    """Matmul weights as [in, out] (transposed views of the [out, in] parameters: x @ w, no copy).
    The query projections are copies scaled by 1/sqrt(head_dim), as MusicGen scales its queries."""

    ln1: tuple[torch.Tensor, torch.Tensor, float]  # self-attention pre-LN (weight, bias, eps)
    qkv: torch.Tensor  # [D, 3D]: q (scaled), k, v projections side by side, one matmul per step
    o: torch.Tensor  # [D, D]
    ln2: tuple[torch.Tensor, torch.Tensor, float]  # cross-attention pre-LN
    cq: torch.Tensor
    ck: torch.Tensor
    cv: torch.Tensor
    co: torch.Tensor
    ln3: tuple[torch.Tensor, torch.Tensor, float]  # FFN pre-LN
    fc1: torch.Tensor  # [D, F]
    fc2: torch.Tensor  # [F, D]


@dataclass
class _Net:
    emb: torch.Tensor  # [K * (V+1), D]: the K embedding tables stacked (index = token + k * (V+1))
    pos: torch.Tensor  # [P, D] sinusoidal positions
    layers: list[_Layer]
    ln_f: tuple[torch.Tensor, torch.Tensor, float]
    heads: torch.Tensor  # [D, K * V]: the K lm heads side by side
    act: Callable[[torch.Tensor], torch.Tensor]
    heads_n: int  # attention heads

    def tensors(self) -> list[torch.Tensor]:
        out = [self.emb, self.pos, self.heads, *self.ln_f[:2]]
        for lw in self.layers:
            out += [*lw.ln1[:2], lw.qkv, lw.o, *lw.ln2[:2], lw.cq, lw.ck, lw.cv, lw.co, *lw.ln3[:2], lw.fc1, lw.fc2]
        return out


def _unwrap(decoder: nn.Module) -> nn.Module:
    """policy.model.decoder, or the MusicgenForCausalLM inside a peft wrapper."""
    if hasattr(decoder, "get_base_model"):
        decoder = decoder.get_base_model()
    if not (hasattr(decoder, "lm_heads") and hasattr(decoder, "model")):
        raise UserError(f"the fast engine needs a transformers MusicgenForCausalLM decoder, got {type(decoder).__name__}")
    return decoder


def _linear_weight(mod: nn.Module) -> torch.Tensor:
    """The effective weight [out, in] of a bias-free linear layer, or of a peft LoRA wrapper of one.

    Plain nn.Linear: the parameter itself (no copy: in-place optimizer steps are seen). LoRA:
    base + delta of the active adapters, computed now (a fresh tensor per call), unless the
    adapters are disabled (`disable_adapter()` context) or already merged.
    """
    if isinstance(mod, nn.Linear):
        if mod.bias is not None:
            raise UserError("the fast engine assumes MusicGen's bias-free linear layers")
        return mod.weight
    base = getattr(mod, "base_layer", None)
    if base is None or not hasattr(mod, "get_delta_weight"):
        raise UserError(f"the fast engine cannot read the weights of a {type(mod).__name__} layer")
    w = _linear_weight(base)
    if getattr(mod, "disable_adapters", False) or getattr(mod, "merged", False):
        return w
    for name in mod.active_adapters:
        if name not in mod.lora_A:
            continue
        if getattr(mod, "use_dora", {}).get(name, False):
            raise UserError("the fast engine does not support DoRA adapters; use the reference sampler")
        w = w + mod.get_delta_weight(name).to(w.dtype)
    return w


def _ln(mod: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor, float]:
    return mod.weight.float(), mod.bias.float(), mod.eps  # the residual stream is fp32 (no copy when fp32)


def resolve_net(policy: MusicGenPolicy, dtype: torch.dtype | None = None) -> _Net:
    """Read the decoder's current weights. Matmul weights are cast to `dtype` if given (a copy)."""
    lm = _unwrap(policy.model.decoder)
    core = lm.model.decoder
    cast = (lambda w: w) if dtype is None else (lambda w: w.to(dtype))
    lin = lambda m: cast(_linear_weight(m)).t()  # noqa: E731  [in, out] views
    layers = []
    for layer in core.layers:
        sa, ca = layer.self_attn, layer.encoder_attn
        layers.append(
            _Layer(
                ln1=_ln(layer.self_attn_layer_norm), qkv=torch.cat([lin(sa.q_proj) * sa.scaling, lin(sa.k_proj), lin(sa.v_proj)], 1),
                o=lin(sa.out_proj), ln2=_ln(layer.encoder_attn_layer_norm), cq=lin(ca.q_proj) * ca.scaling,
                ck=lin(ca.k_proj), cv=lin(ca.v_proj), co=lin(ca.out_proj),
                ln3=_ln(layer.final_layer_norm), fc1=lin(layer.fc1), fc2=lin(layer.fc2),
            )  # fmt: skip
        )
    emb = torch.cat([e.weight for e in core.embed_tokens]).float()  # [K*(V+1), D]: K small tables, a cheap copy
    heads = cast(torch.cat([_linear_weight(h) for h in lm.lm_heads])).t()  # [D, K*V]
    return _Net(
        emb=emb, pos=core.embed_positions.weights.float(), layers=layers, ln_f=_ln(core.layer_norm), heads=heads,
        act=core.layers[0].activation_fn, heads_n=core.layers[0].self_attn.num_heads,
    )  # fmt: skip


def _attend(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One query per sequence: q [S, 1, hd] (scaled), k_t [S, hd, L], v [S, L, hd] (cache views) -> [S, 1, hd].

    bias: additive mask (0 / -inf) broadcastable to the scores [S, 1, L], or None. Two bmm's: for a
    single query this is what SDPA does, minus its dispatch (on CPU it cost ~10% more).
    """
    s = torch.bmm(q, k_t)  # [S, 1, L] (q comes scaled by 1/sqrt(hd))
    if bias is not None:
        s += bias
    return torch.bmm(s.softmax(-1), v)


def _add_linear_(h: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """h += x @ w in place (w [in, out]; the residual stream h [n, D] is fp32, x may be bf16): one
    addmm when the dtypes agree."""
    if x.dtype == h.dtype:
        h.addmm_(x, w)
    else:
        h += torch.mm(x, w)


# ---- per-call decoding state -----------------------------------------------------------------
@dataclass
class _State:
    B: int  # rows sampled
    guided: bool
    kv: torch.Tensor  # [layers, 2, N, H, T_max, hd] self-attention keys and values
    xkv: torch.Tensor  # [layers, 2, B, H, L, hd] cross-attention keys and values of the conditional rows
    cross_bias: torch.Tensor | None  # [B*H, 1, L] 0 / -inf at padded text; eager path: None when nothing is padded
    offsets: torch.Tensor  # [K] k * (V+1): token -> row of the stacked embedding
    seed_hash: torch.Tensor  # [B] hash32(seed)
    noise_hash: torch.Tensor  # [K, V] token_hash(K, V)
    valid: torch.Tensor  # [K, steps] bool
    arange: torch.Tensor  # [T_max] positions, for the bucket mask
    cur: torch.Tensor  # [B, K] the tokens fed at this step
    pos: torch.Tensor  # [1] long: this step's position
    tokens: torch.Tensor  # [B, K, steps] sampled (delayed) tokens
    logps: torch.Tensor  # [B, K, steps] their log-probs
    views: list = field(init=False, repr=False)  # per layer, views of the caches (`_cache_views`)
    mix: tuple | None = None  # (reference _Net, its _State sharing `cur`, coef): sample the geometric mixture

    def __post_init__(self):
        self.views = _cache_views(self.kv, self.xkv)


def _cache_views(kv: torch.Tensor, xkv: torch.Tensor) -> list[tuple]:
    """Per layer: (k and v [2, N, H, T, hd], k flat [N*H, T, hd], v flat, cross k_t [B*H, hd, L],
    cross v [B*H, L, hd]), all views, made once per call rather than sliced anew every step."""
    _, _, N, H, T, hd = kv.shape
    B, L = xkv.shape[2], xkv.shape[4]
    return [
        (kv[i], kv[i, 0].view(N * H, T, hd), kv[i, 1].view(N * H, T, hd),
         xkv[i, 0].view(B * H, L, hd).transpose(1, 2), xkv[i, 1].view(B * H, L, hd))
        for i in range(kv.shape[0])
    ]  # fmt: skip


@dataclass(frozen=True)
class Mixture:
    """Sample from pi^(1-coef) * ref^coef per token, normalised: the sampler's policy pi and `reference`
    (None: the policy itself with its LoRA adapters disabled). coef 0: pi's tokens, 1: ref's."""

    reference: MusicGenPolicy | None
    coef: float

    def __post_init__(self):
        if not 0 <= self.coef <= 1:
            raise UserError(f"mixture_coef must be in [0, 1], got {self.coef}")


class FastSampler:
    """`FastSampler(policy).sample(...)` == `policy.sample(...)`, faster. See the module docstring.

    graph: the static path, captured as CUDA graphs (default: on when the policy is on CUDA). Off
        CUDA, True runs the same static path eagerly with no capture: slower, a testing aid.
    compile: `torch.compile` the step (default off; implies the static path).
    dtype: compute dtype of the matmuls (None: the weights' own, or the active autocast dtype).
    bucket: on the graph path, the cache is read in windows of this many positions (one graph each).
    """

    def __init__(
        self,
        policy: MusicGenPolicy,
        *,
        graph: bool | None = None,
        compile: bool = False,
        dtype: torch.dtype | None = None,
        bucket: int = 256,
    ):
        self.policy = policy
        _unwrap(policy.model.decoder)  # fail early on an unsupported decoder
        self.graph = graph
        self.compile = compile
        self.dtype = dtype
        self.bucket = bucket
        self._step_fn = torch.compile(self._step, dynamic=False) if compile else self._step
        self._graphs: dict | None = None  # the last captured graph set: {"key", "state", "net", "graphs"}

    # ---- public --------------------------------------------------------------------------
    def clear(self) -> None:
        """Free the kept CUDA graphs and their state (KV cache, buffers); the next call captures anew."""
        self._graphs = None

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        num_samples: int = 1,
        duration_s: float | None = None,
        *,
        num_frames: int | None = None,
        sampling: SamplingConfig = SamplingConfig(),
        seed: int = 0,
        progress: bool = False,
        mixture: Mixture | None = None,
        seeds: list[int] | None = None,
    ) -> Rollout:
        """Same contract as `MusicGenPolicy.sample`: rows [p0]*n + [p1]*n + ..., row i seeded `seed + i`.
        `mixture`: draw from the geometric mixture with a reference instead (log-probs: the mixture's).
        `seeds`: one seed per row in place of `seed + i` (the app's batcher joins requests with seeds of
        their own); a row's tokens depend on its seed alone, so each row equals a single call with it."""
        pol = self.policy
        rows, row_seeds, T = pol.rollout_rows(prompts, num_samples, duration_s, num_frames, seed)
        if seeds is not None:
            if len(seeds) != len(rows):
                raise UserError(f"{len(seeds)} seeds for {len(rows)} rows")
            row_seeds = torch.tensor([int(x) for x in seeds], dtype=torch.long)
        seeds = row_seeds  # [B]
        dev = pol.device
        use_graph = self._use_graph(dev) and mixture is None
        dtype = self.dtype
        if dtype is None and torch.is_autocast_enabled(dev.type):
            dtype = torch.get_autocast_dtype(dev.type)
        states, mask = pol.encode_text(rows)  # [B, L, D], [B, L] (under the caller's autocast, as the reference)
        states = states.float()
        if mixture is not None and mixture.reference is not None:  # the reference's own (frozen) text encoder
            ref_text = [x.float() if x.is_floating_point() else x for x in mixture.reference.encode_text(rows)]
        else:  # LoRA: the policy's text encoder has no adapters
            ref_text = states, mask
        with torch.autocast(dev.type, enabled=False):  # dtypes are explicit below
            net = resolve_net(pol, dtype)
            if use_graph:
                try:
                    st = self._run_static(net, states, mask, seeds, T, sampling, progress)
                except RuntimeError as e:
                    if self.graph is not None or self.compile:  # asked for explicitly: say so
                        raise
                    # the automatic choice on CUDA: a capture that fails on this build or device must
                    # not end a training run; the eager path draws the same tokens, only slower
                    warnings.warn(f"CUDA-graph decoding failed ({str(e).strip().splitlines()[0][:200]}); "
                                  "decoding eagerly from now on (FastSampler(graph=False) skips the attempt)")
                    self.graph, self._graphs, use_graph = False, None, False
            if not use_graph:
                st = self._new_state(net, states, mask, seeds, T, sampling.guided)
                self._prefill_cross(net, st, states, mask)
                if mixture is not None:
                    st.mix = self._mixture_state(mixture, st, *ref_text, seeds, T, sampling.guided, dtype)
                self._run_eager(net, st, sampling, progress)
        return Rollout(dp.undelay(st.tokens), dp.undelay(st.logps), rows, seeds, sampling)  # undelay copies

    def _mixture_state(self, mixture: Mixture, st: _State, states, mask, seeds, T: int, guided: bool, dtype) -> tuple:
        """The reference's side of a mixture: its weights, and a decoding state of its own (KV caches,
        cross-attention of its text states [B, L, D]) fed the same tokens as `st`."""
        if mixture.reference is None:  # LoRA: the same network, read with its adapters off
            with self.policy.model.decoder.disable_adapter():
                net = resolve_net(self.policy, dtype)
        else:
            net = resolve_net(mixture.reference, dtype)
        rst = self._new_state(net, states, mask, seeds, T, guided)
        rst.cur = st.cur  # one tensor: both sides are fed the mixture's tokens
        self._prefill_cross(net, rst, states, mask)
        return net, rst, mixture.coef

    def _use_graph(self, dev: torch.device) -> bool:
        """The static (CUDA-graph) path: when compiling, when asked, or by default on CUDA."""
        return self.compile or ((dev.type == "cuda") if self.graph is None else self.graph)

    # ---- setup ---------------------------------------------------------------------------
    def _new_state(self, net: _Net, states, mask, seeds, T: int, guided: bool, L: int | None = None, static=False) -> _State:
        pol = self.policy
        B, K, V = len(seeds), pol.num_codebooks, pol.vocab_size
        dev, L = states.device, L or states.shape[1]
        N = 2 * B if guided else B
        D, H = net.emb.shape[1], net.heads_n
        kv_dtype = net.layers[0].qkv.dtype
        steps = T + K - 1
        n_layers = len(net.layers)
        k = torch.arange(K, device=dev)
        hd = D // H
        # eager: every position read was written this call; static: masked positions are read too (0 * garbage
        # could be NaN), so they start as zeros
        alloc = torch.zeros if static else torch.empty
        return _State(
            B=B, guided=guided,
            kv=alloc(n_layers, 2, N, H, steps, hd, dtype=kv_dtype, device=dev),
            xkv=torch.zeros(n_layers, 2, B, H, L, hd, dtype=kv_dtype, device=dev),
            cross_bias=None,
            offsets=k * (V + 1),
            seed_hash=hash32(seeds.to(dev)),
            noise_hash=token_hash(K, V, dev),
            valid=dp.valid_mask(K, T, device=dev),
            arange=torch.arange(steps, device=dev),
            cur=torch.full((B, K), pol.bos_id, dtype=torch.long, device=dev),
            pos=torch.zeros(1, dtype=torch.long, device=dev),
            tokens=torch.full((B, K, steps), pol.pad_id, dtype=torch.long, device=dev),
            logps=torch.zeros((B, K, steps), dtype=torch.float32, device=dev),
        )  # fmt: skip

    def _prefill_cross(self, net: _Net, st: _State, states: torch.Tensor, mask: torch.Tensor) -> None:
        """Cross-attention K/V of the conditional rows, once: states [B, L, D], mask [B, L] (L <= cache's)."""
        B, L, D = states.shape
        H = net.heads_n
        x = states.to(net.layers[0].ck.dtype)
        for i, lw in enumerate(net.layers):
            st.xkv[i, 0, :, :, :L] = (x @ lw.ck).view(B, L, H, D // H).transpose(1, 2)
            st.xkv[i, 1, :, :, :L] = (x @ lw.cv).view(B, L, H, D // H).transpose(1, 2)
        keep = torch.zeros(B, st.xkv.shape[4], dtype=torch.bool, device=mask.device)
        keep[:, :L] = mask.bool()
        bias = torch.zeros(keep.shape, device=mask.device).masked_fill_(~keep, float("-inf"))  # [B, L_cache]
        bias = bias[:, None, None, :].expand(B, H, 1, -1).reshape(B * H, 1, -1)  # [B*H, 1, L_cache]
        if st.cross_bias is not None:  # the graph path: a captured buffer, written in place
            st.cross_bias.copy_(bias)
        elif not bool(keep.all()):  # the eager path: no bias at all when nothing is padded
            st.cross_bias = bias

    # ---- the step ------------------------------------------------------------------------
    def _step(self, net: _Net, st: _State, cfg: SamplingConfig, length: int, masked: bool, noise=None, j=None) -> None:
        """One decoding step at position st.pos over cache positions [0, length).

        Reads st.cur; writes the KV cache at st.pos, st.tokens/st.logps at st.pos, and st.cur.
        masked: attend only to positions <= st.pos (the graph path, where length is a bucket).
        noise: this step's Gumbel noise [B, K, V] if precomputed (else computed here from st.pos).
        j: st.pos as a Python int on the eager path: cheaper slice writes than index_copy_.
        """
        logp = self._logp(net, st, cfg, length, masked, j)  # [B, K, V] float32
        if st.mix is not None:  # the reference's step on the same tokens, then the mixture of the two
            ref_net, ref_st, coef = st.mix
            ref_st.pos = st.pos
            logp = geometric_mixture(logp, self._logp(ref_net, ref_st, cfg, length, masked, j), coef)
        new = (logp + (self._gumbel(st) if noise is None else noise)).argmax(-1)  # [B, K]
        v = st.valid.index_select(1, st.pos)[:, 0] if j is None else st.valid[:, j]  # [K]
        new = torch.where(v, new, self.policy.pad_id)
        lp = torch.where(v, logp.gather(-1, new.clamp(max=logp.shape[-1] - 1)[..., None])[..., 0], 0.0)
        if j is None:
            st.logps.index_copy_(2, st.pos, lp[..., None])
            st.tokens.index_copy_(2, st.pos, new[..., None])
        else:
            st.logps[:, :, j] = lp
            st.tokens[:, :, j] = new
        st.cur.copy_(new)

    def _logp(self, net: _Net, st: _State, cfg: SamplingConfig, length: int, masked: bool, j=None) -> torch.Tensor:
        """The network at st.pos on st.cur: writes its KV cache there, returns the sampling
        distribution's log-probs [B, K, V] (float32). Arguments as `_step`'s."""
        B, N = st.B, st.kv.shape[2]
        D, H = net.emb.shape[1], net.heads_n
        hd = D // H
        # embedding: sum over codebooks + position; [B, D], then [N, D] (uncond rows see the same tokens)
        h = F.embedding(st.cur + st.offsets, net.emb).sum(1) + net.pos.index_select(0, st.pos)
        if st.guided:
            h = torch.cat([h, h])
        h = h.float()  # [N, D]: one query row per sequence, kept 2-D (cheapest matmul path)
        self_bias = None
        if masked:  # positions after st.pos are not there yet: 0 / -inf over the bucket [length]
            self_bias = torch.zeros(length, device=h.device).masked_fill_(st.arange[:length] > st.pos, float("-inf"))
        wdt = net.layers[0].qkv.dtype
        for lw, (kvc, kf, vf, xk_t, xv) in zip(net.layers, st.views):
            # self-attention with the static cache
            x = F.layer_norm(h, (D,), *lw.ln1).to(wdt)
            qkv = torch.mm(x, lw.qkv).view(N, 3, H, hd)
            if j is not None:  # k and v in one copy: [N, 2, H, hd] -> the cache's [2, N, H, hd] at j
                kvc.select(3, j).copy_(qkv.narrow(1, 1, 2).transpose(0, 1))
            else:
                kvc.index_copy_(3, st.pos, qkv.narrow(1, 1, 2).transpose(0, 1)[:, :, :, None])
            q = qkv.select(1, 0).reshape(N * H, 1, hd)
            a = _attend(q, kf.narrow(1, 0, length).transpose(1, 2), vf.narrow(1, 0, length), self_bias)
            _add_linear_(h, a.view(N, D), lw.o)
            # cross-attention: conditional rows only (unconditional rows attend to zero K/V: output 0)
            hc = h[:B]
            x = F.layer_norm(hc, (D,), *lw.ln2).to(wdt)
            a = _attend(torch.mm(x, lw.cq).view(B * H, 1, hd), xk_t, xv, st.cross_bias)
            _add_linear_(hc, a.view(B, D), lw.co)  # in place: h is this step's own tensor
            # feed-forward
            x = F.layer_norm(h, (D,), *lw.ln3).to(wdt)
            _add_linear_(h, net.act(torch.mm(x, lw.fc1)), lw.fc2)
        h = F.layer_norm(h, (D,), *net.ln_f).to(net.heads.dtype)  # [N, D]
        logits = torch.mm(h, net.heads).view(N, st.offsets.shape[0], -1)  # [N, K, V]
        cond, uncond = (logits[:B], logits[B:]) if st.guided else (logits, None)
        return process_logits(cond, uncond, cfg)  # [B, K, V] float32

    @staticmethod
    def _gumbel(st: _State) -> torch.Tensor:
        """`musicrl.model.sampling.gumbel_noise(seeds, step, K, V)` with the step as a tensor: [B, K, V]."""
        return gumbel_chunk(st.seed_hash, st.noise_hash, st.pos)[0]

    # ---- loops ---------------------------------------------------------------------------
    def _steps(self, n: int, progress: bool):
        if not progress:
            return range(n)
        from tqdm.auto import tqdm

        return tqdm(range(n), desc="sampling (fast)", unit="step", leave=False)

    def _run_eager(self, net: _Net, st: _State, cfg: SamplingConfig, progress: bool) -> None:
        steps = st.tokens.shape[2]
        B, K, V = st.B, *st.noise_hash.shape
        chunk = max(1, min(32, (1 << 18) // (B * K * V)))  # steps of Gumbel noise drawn at once (cache-sized)
        noise = None
        for j in self._steps(steps, progress):
            if j % chunk == 0:
                noise = gumbel_chunk(st.seed_hash, st.noise_hash, st.arange[j : j + chunk])  # [c, B, K, V]
            st.pos = st.arange[j : j + 1]
            self._step_fn(net, st, cfg, j + 1, False, noise[j % chunk], j)

    def _run_static(self, net: _Net, states, mask, seeds, T: int, cfg: SamplingConfig, progress: bool) -> _State:
        """The graph path: static buffers, the cache read in masked buckets, st.pos advanced on the device.

        On CUDA each bucket's step is captured once as a CUDA graph and replayed; the captured set (and
        its state) is kept for the next call of the same shape, whose weights are refreshed in place.
        Off CUDA (tests) the same steps run eagerly, which checks everything but the capture itself.
        """
        pol = self.policy
        capture = states.device.type == "cuda"
        L = math.ceil(states.shape[1] / 16) * 16  # padded text length, so prompts of similar length share graphs
        key = (len(seeds), L, T, cfg, net.layers[0].qkv.dtype)
        cached = self._graphs if self._graphs is not None and self._graphs["key"] == key else None
        if cached is not None and not self._refresh(cached["net"], net):
            cached = None
        if cached is None:
            self._graphs = None  # free the old set before allocating the new one
            st, static = self._new_state(net, states, mask, seeds, T, cfg.guided, L=L, static=True), net
        else:
            st, static = cached["state"], cached["net"]
            st.seed_hash.copy_(hash32(seeds.to(st.seed_hash.device)))
        if st.cross_bias is None:  # the captured step reads a bias buffer, always
            st.cross_bias = torch.zeros(st.B * net.heads_n, 1, L, device=st.kv.device)
        st.xkv.zero_()
        self._prefill_cross(static, st, states, mask)
        steps = st.tokens.shape[2]
        bucket_of = lambda j: min(steps, (j // self.bucket + 1) * self.bucket)  # noqa: E731

        def step_and_advance(length: int):
            self._step_fn(static, st, cfg, length, True)
            st.pos.add_(1)

        if cached is None:
            graphs = {}
            if capture:
                lengths = sorted({bucket_of(j) for j in range(steps)})
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up (allocator, kernels, compile) outside capture
                    for length in lengths:
                        for _ in range(2):
                            st.pos.zero_()
                            step_and_advance(length)
                torch.cuda.current_stream().wait_stream(side)
                pool = torch.cuda.graph_pool_handle()
                for length in lengths:
                    graphs[length] = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graphs[length], pool=pool):
                        step_and_advance(length)
            self._graphs = {"key": key, "state": st, "net": static, "graphs": graphs}
        graphs = self._graphs["graphs"]
        st.pos.zero_()
        st.cur.fill_(pol.bos_id)
        for j in self._steps(steps, progress):
            if capture:
                graphs[bucket_of(j)].replay()
            else:
                step_and_advance(bucket_of(j))
        return st

    def _refresh(self, static: _Net, current: _Net) -> bool:
        """Bring the captured weights up to date in place; False if that is not safe (then re-capture).

        A captured slot that is the decoder's own parameter is read live and needs nothing; a slot we
        own (a cast, a stacked table, a LoRA-folded weight) is overwritten. A slot holding a live
        parameter whose current value is another tensor (adapters toggled) must not be written into.
        """
        decoder = self.policy.model.decoder
        live = {t.data_ptr() for t in [*decoder.parameters(), *decoder.buffers()]}
        pairs = [(s, w) for s, w in zip(static.tensors(), current.tensors()) if s.data_ptr() != w.data_ptr()]
        if any(s.data_ptr() in live or s.shape != w.shape or s.dtype != w.dtype for s, w in pairs):
            return False
        for s, w in pairs:
            s.copy_(w)
        return True
