"""KL-regularised policy-gradient fine-tuning of MusicGen on sequence-level rewards (MusicRL).

One step, top to bottom (`RLTrainer.step`):
  1. rollouts: `samples_per_prompt` clips for each of `prompts_per_step` prompts, drawn from the
     current policy with the sampling distribution of the config (guided when guidance_scale > 1:
     log-probs and KL are then those of the guided distribution actually sampled);
  2. decode with the frozen codec, score with the reward (rewards only see audio);
  3. advantages: leave-one-out baseline over the k samples of a prompt (RLOO), or a learned value
     baseline on the prompt (the paper's), or none;
  4. update: policy-gradient (PPO-clipped when `ppo_epochs` > 1) + `kl_coef` * KL(pi || ref), the KL
     exact over the full codebook at every step (the paper's) or the sampled estimator folded into
     the reward; gradient accumulation over micro-batches.
`objective` changes steps 1 and 3-4 only (online preference optimisation from a preference model):
  - 'online_dpo': each prompt's two samples are a pair, chosen by the reward (the Bradley-Terry
    preference sigmoid(r(a) - r(b)) > 1/2), and the update is the DPO trainer's loss against the
    reference (`musicrl.train.dpo_trainer.preference_loss`, sigmoid, `beta`);
  - 'nash_md' (Munos et al. 2023; as TRL's NashMDTrainer): each rollout row gets a rival from the
    geometric mixture of policy and reference (`FastSampler.sample(mixture=...)`); the advantage is
    P(row > rival) - 1/2 (1/2: TRL's control variate), the KL term as for 'reward' (`sampled`: TRL's
    REINFORCE form, log pi/ref summed over the clip).
The reference is a frozen copy of the initial policy, `reference` when given (MusicRL-RU: the R
checkpoint), or, with LoRA, the same network with its adapters disabled (no second copy); that set-up,
the teacher-forced log-probs and the metrics log are `musicrl.train.tuning`, shared with DPO.

All randomness of a step is derived from (seed, step), so `--resume` from a checkpoint continues
exactly as the uninterrupted run would have.

Under torchrun (`musicrl.train.distributed`, docs/scaling-out.md) each process rolls out, decodes and
scores its contiguous share of the step's prompts, all k samples of a prompt on one process (RLOO
groups and flat-group checks stay whole), row r of the step seeded as in one process. The rewards are
gathered, so advantages, their normalisation and the reward's running statistics are those of the
global batch; each process back-propagates its own rows, weighted by their share of the global batch,
and the gradients are summed before one optimizer step: the same update as one process. Rank 0 logs,
evaluates and writes the checkpoints; every rank resumes from them. With `fsdp` the decoders are
sharded (`distributed.shard`); rollouts gather them whole, and every rank evaluates (FSDP's forward is
collective).
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from musicrl.errors import UserError
from musicrl.train import checkpoints as ckpt
from musicrl.model.device import resolve_device
from musicrl.model.policy import MusicGenPolicy
from musicrl.train import distributed, tuning
from musicrl.train.rl_config import RLConfig


def step_seed(seed: int, step: int) -> int:
    """Rollout seed of a step: distinct rows across steps, a pure function of (seed, step)."""
    return (seed * 1_000_003 + step * 10_007) % (2**31)


class ValueHead(nn.Module):
    """The learned baseline: expected reward of a prompt, from its pooled (frozen) text states."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, 1))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [B, L, D], [B, L] -> [B]
        pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.net(pooled.detach().float())[:, 0]


def leave_one_out(reward: torch.Tensor, k: int) -> torch.Tensor:
    """reward [P * k] (rows grouped by prompt) -> [P, k]: each row's reward minus the mean of its
    prompt's other k - 1 rows (RLOO's baseline)."""
    r = reward.view(-1, k)  # [P, k]
    return r - (r.sum(1, keepdim=True) - r) / (k - 1)


def exact_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || ref) over the last (codebook) axis: [..., V] -> [...]. Zero-probability tokens add 0."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - ref_logp), torch.zeros_like(p)).sum(-1)


class RLTrainer:
    def __init__(self, cfg: RLConfig, prompts: list[str], eval_prompts: list[str], policy: MusicGenPolicy | None = None,
                 reward=None, reference=None):
        """`prompts`: the training prompts (each step draws `prompts_per_step` of them); `eval_prompts`:
        those of the periodic evaluation. `reward`: built from `cfg.reward` when not given."""
        if not prompts or not eval_prompts:
            raise UserError("the trainer needs at least one training and one evaluation prompt")
        if len(prompts) < cfg.prompts_per_step:
            raise UserError(f"prompts_per_step={cfg.prompts_per_step} but only {len(prompts)} training prompts")
        self.cfg = cfg
        self.ranks, self.device = distributed.join(resolve_device(cfg.device))
        self._check_shares()
        self.out = Path(cfg.out_dir)
        if reward is None:  # first: a missing reward model fails before minutes of model loading
            from musicrl.rewards.combine import build_reward

            reward = build_reward(cfg.reward, self.device)
        self.reward = reward
        self.policy = policy or MusicGenPolicy.from_pretrained(cfg.model, device=self.device)
        self.reference = tuning.prepare_policy(self.policy, cfg, self.device, reference)  # None with LoRA: adapters off
        self.sharded = cfg.fsdp and distributed.shard(self.ranks, self.policy, self.reference)  # FSDP: 1/world of each
        self.trained = [p for p in self.policy.model.decoder.parameters() if p.requires_grad]  # the model's (not the value head)
        learned = cfg.baseline == "value" and cfg.objective == "reward"  # the other objectives have no baseline
        self.value = None
        if learned:
            with torch.random.fork_rng(devices=[]):  # its random init: a function of cfg.seed, not of what ran before
                torch.manual_seed(cfg.seed)
                self.value = ValueHead(self.policy.model.decoder.config.hidden_size).to(self.device)
        self.params = self.trained + (list(self.value.parameters()) if self.value is not None else [])
        self.ranks.broadcast(self.params)  # as DDP does: every process starts from rank 0's weights
        self.ema = [p.detach().clone() for p in self.trained] if cfg.ema_decay else None
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.train_prompts, self.eval_prompts = list(prompts), list(eval_prompts)
        if cfg.engine == "fast":
            from musicrl.model.engine import FastSampler

            self.sampler = FastSampler(self.policy)  # reads the live weights at every call
        else:
            self.sampler = self.policy
        self.votes_hash = cfg.votes_hash or _votes_hash_of(cfg.reward)
        self._log = tuning.MetricsLog(self.out)

    # ---- setup -------------------------------------------------------------------------------
    def _check_shares(self) -> None:
        """One line now, not a hang later: the step's prompts split evenly over the processes, and
        each process's rows into grad_accum micro-batches (online DPO: whole pairs)."""
        cfg = self.cfg
        self.ranks.share(cfg.prompts_per_step, "prompts_per_step")  # (a one-line error if they do not split)
        prompts = cfg.prompts_per_step // self.ranks.world
        units = prompts if cfg.objective == "online_dpo" else prompts * cfg.samples_per_prompt
        if units % cfg.grad_accum:
            raise UserError(f"each of the {self.ranks.world} processes has {units} {'pairs' if cfg.objective == 'online_dpo' else 'rows'}"
                            f" a step, not divisible by grad_accum={cfg.grad_accum}")  # fmt: skip

    @contextmanager
    def ema_weights(self):
        """The EMA weights in place of the live ones inside the block; yields a copy of the live
        ones (None, and a no-op, without ema_decay)."""
        if self.ema is None:
            yield None
            return
        live = [p.detach().clone() for p in self.trained]
        with torch.no_grad():
            _copy([p.data for p in self.trained], self.ema)
        try:
            yield live
        finally:
            with torch.no_grad():
                _copy([p.data for p in self.trained], live)

    def _autocast(self):
        return tuning.autocast(self.cfg.mixed_precision, self.device)

    def reference_distributions(self, prompts, codes) -> torch.Tensor:
        return tuning.reference_distributions(self.policy, self.reference, prompts, codes, self.cfg.sampling,
                                              self.cfg.mixed_precision)  # fmt: skip

    def prompts_for(self, step: int) -> list[str]:
        rng = np.random.default_rng([self.cfg.seed, step])
        return [self.train_prompts[i] for i in rng.choice(len(self.train_prompts), self.cfg.prompts_per_step, replace=False)]

    # ---- the step -------------------------------------------------------------------------------
    def step(self, step: int) -> dict:
        cfg, pol, k, ranks = self.cfg, self.policy, self.cfg.samples_per_prompt, self.ranks
        times = {}
        if self.device.type == "cuda":  # the step's own peak: weights, reference, optimizer state, activations
            torch.cuda.reset_peak_memory_stats(self.device)
        t = time.perf_counter()
        tuning.eval_mode(pol)  # no dropout: sampling and training distributions must be the same
        roll, rival = self._rollouts(step)  # this process's rows (all of them in one process)
        times["rollout"], t = time.perf_counter() - t, time.perf_counter()
        both = roll.codes if rival is None else torch.cat([roll.codes, rival.codes])
        audio = pol.decode(both)  # [b (+ b rivals), 1, S]
        times["decode"], t = time.perf_counter() - t, time.perf_counter()
        if hasattr(self.reward, "set_step"):
            self.reward.set_step(step)
        b = len(roll.prompts)
        B, mb, mine = b * ranks.world, b // cfg.grad_accum, slice(ranks.rank * b, (ranks.rank + 1) * b)  # global rows, micro-batch, ours
        with torch.no_grad():
            reward, components = self._score(audio, roll.prompts, 1 if rival is None else 2)  # [B (+ B)], the global batch
        times["reward"], t = time.perf_counter() - t, time.perf_counter()
        target, extra = reward, {}  # what the policy gradient raises
        if rival is not None:  # Nash-MD: the preference of each row over its rival
            reward, rival_reward, audio = reward[:B], reward[B:], audio[:b]
            components = {n: v[:B] for n, v in components.items()}
            target = torch.sigmoid(reward - rival_reward)  # [B] P(row > rival), Bradley-Terry
            extra = {"preference": target.mean().item(), "reward_rival": rival_reward.mean().item()}
        kl_sampled = None
        if cfg.kl_estimator == "sampled":  # fold sum_t log(pi/ref) of the sampled tokens into the reward
            ref_lp = torch.cat([self._ref_token_logp(roll, i, i + mb) for i in range(0, b, mb)])
            kl_sampled = ranks.gather((roll.log_probs - ref_lp).sum((1, 2)))  # [B]
            target = target - cfg.kl_coef * kl_sampled
        rows = [p for p in self.prompts_for(step) for _ in range(k)]  # the global rows' prompts (roll.prompts in one process)
        adv, target = self.advantages(target, rows)[mine], target[mine]  # [b]: over the global batch, then ours
        if cfg.skip_flat_groups:  # only the prompts whose k rewards differ carry a policy gradient
            roll, adv, target = self._informative(roll, adv, target)
        n, n_all = len(roll.prompts), int(ranks.sum(torch.tensor(len(roll.prompts), device=self.device)))
        stats = {"kl": 0.0, "entropy": 0.0, "loss": 0.0, "clip_frac": 0.0}
        grad_norm = torch.zeros(())
        for _ in range(cfg.ppo_epochs if n_all else 0):
            for i in range(0, n, mb):  # each micro-batch weighs its share of the global batch's rows
                weight = min(mb, n - i) / n_all
                s = self._micro_step(roll, adv, target, i, min(i + mb, n), weight)
                for key in stats:
                    stats[key] += s[key] * weight / cfg.ppo_epochs
            ranks.sum_grads(self.params)  # the global batch's gradient on every process
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:  # once per batch, whatever ppo_epochs: the average is over training steps
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.trained], 1 - cfg.ema_decay)
        times["update"] = time.perf_counter() - t
        if ranks.world > 1:  # each process's share of the weighted means -> the global ones
            stats = dict(zip(stats, ranks.sum(torch.tensor(list(stats.values()), dtype=torch.float64, device=self.device)).tolist()))
        if kl_sampled is not None:
            stats["kl"] = kl_sampled.mean().item() / (roll.codes.shape[1] * roll.codes.shape[2])
        metrics = {"step": step + 1, "reward": reward.mean().item(), "grad_norm": float(grad_norm), **stats, **extra}
        if cfg.skip_flat_groups:
            metrics["informative"] = n_all / B  # the share of rows the update used
        metrics.update({f"reward/{n}": v.float().mean().item() for n, v in components.items()})
        metrics["diversity"] = self._diversity(audio, k)
        metrics["lr"] = self.opt.param_groups[0]["lr"]
        metrics.update({f"time/{n}": v for n, v in times.items()})
        if self.device.type == "cuda":
            metrics["mem/peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return metrics

    def _rollouts(self, step: int):
        """This process's share of the step's rollout [b rows], and with nash_md each row's rival from
        the geometric mixture (seeded apart: rows B..2B-1 of the step's seed), else None. Row r of the
        step's global batch is seeded `step_seed + r` however many processes share it."""
        cfg, prompts, k = self.cfg, self.prompts_for(step), self.cfg.samples_per_prompt
        mine = self.ranks.share(len(prompts), "prompts_per_step")
        seed = step_seed(cfg.seed, step) + mine.start * k
        rival_net = self.reference if cfg.objective == "nash_md" else None
        with self._autocast(), distributed.gathered(self.policy, rival_net):  # (FSDP: the engine reads whole weights)
            roll = self.sampler.sample(prompts[mine], k, cfg.duration_s, sampling=cfg.sampling, seed=seed)
            if cfg.objective != "nash_md":
                return roll, None
            from musicrl.model.engine import Mixture

            mixture = Mixture(self.reference, cfg.mixture_coef)  # reference None (LoRA): the adapters off
            rival = self.sampler.sample(prompts[mine], k, cfg.duration_s, sampling=cfg.sampling,
                                        seed=seed + len(prompts) * k, mixture=mixture)  # fmt: skip
        return roll, rival

    def _score(self, audio, prompts: list[str], parts: int) -> tuple[torch.Tensor, dict]:
        """(total [parts * B], raw components) of the step's global batch, in its row order: rollout
        rows, then (parts=2) the rivals. Each process scores its own clips [parts * b]; a combined
        reward's running normalisation then sees the whole batch at once, as in one process."""
        ranks, rows = self.ranks, prompts * parts

        def whole(x):  # ours [parts * b] -> [parts * B]
            return torch.cat([ranks.gather(h) for h in x.to(self.device).chunk(parts)]) if ranks.world > 1 else x

        if hasattr(self.reward, "combine"):
            components = {n: whole(v) for n, v in self.reward.score(audio, self.policy.sample_rate, rows).items()}
            total = self.reward.combine(components)
        else:  # a plain reward function: pure, so scoring in shares changes nothing
            total, components = self.reward(audio, self.policy.sample_rate, rows)
            total, components = whole(total), {n: whole(v) for n, v in components.items()}
        return total.to(self.device).float(), components

    def _informative(self, roll, adv, target):
        """The rows of the prompts whose k rewards are not all equal (DAPO's dynamic sampling, without
        resampling). A flat group's advantages are all zero, so its rows would only add the KL term and
        dilute the policy gradient of the others in the batch mean."""
        k = self.cfg.samples_per_prompt
        r = target.view(-1, k)  # [P, k]
        keep = ((r.max(1).values - r.min(1).values) > 1e-6).repeat_interleave(k).nonzero()[:, 0].cpu()  # [n]
        kept = replace(roll, codes=roll.codes[keep], log_probs=roll.log_probs[keep],
                       prompts=[roll.prompts[i] for i in keep.tolist()], seeds=roll.seeds[keep])  # fmt: skip
        return kept, adv[keep.to(adv.device)], target[keep.to(target.device)]

    def _micro_step(self, roll, adv, reward, i: int, j: int, weight: float) -> dict:
        cfg, pol = self.cfg, self.policy
        prompts, codes = roll.prompts[i:j], roll.codes[i:j]
        with self._autocast():
            dist, logp = tuning.teacher_forced(pol, prompts, codes, cfg.sampling)  # [b, K, T, V], [b, K, T]
        ratio = (logp - roll.log_probs[i:j]).exp()
        kl_tok, ref = torch.zeros_like(logp), None
        if cfg.kl_estimator == "exact":
            ref = self.reference_distributions(prompts, codes).float()  # [b, K, T, V]
            kl_tok = exact_kl(dist, ref)  # [b, K, T]
        if cfg.objective == "online_dpo":  # DPO's loss on the pairs; beta is its KL weight
            loss = online_dpo_loss(logp, ref.gather(-1, codes[..., None])[..., 0], reward[i:j], cfg.beta)
        else:
            a = adv[i:j].reshape(j - i, 1, -1)  # [b, 1, 1]; [b, 1, T] where a subclass gives each frame its own
            pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * a)  # [b, K, T]
            if cfg.coarse_codebooks:  # the fine codes' tokens out; each token still weighs 1/(K T) against the KL's
                pg = pg * (torch.arange(pg.shape[1], device=pg.device) < cfg.coarse_codebooks)[:, None]
            loss = pg.mean() + cfg.kl_coef * kl_tok.mean()  # (kl_tok is 0 with the sampled estimator)
        if self.value is not None:
            states, mask = pol.encode_text(prompts)
            loss = loss + 0.5 * (self.value(states, mask) - reward[i:j]).pow(2).mean()
        (loss * weight).backward()
        with torch.no_grad():
            entropy = -(torch.where(dist > -torch.inf, dist.exp() * dist, torch.zeros_like(dist))).sum(-1)
            clipped = ((ratio - 1).abs() > cfg.clip_eps).float().mean()
        return {"kl": kl_tok.mean().item(), "entropy": entropy.mean().item(), "loss": loss.item(), "clip_frac": clipped.item()}

    def _ref_token_logp(self, roll, i: int, j: int) -> torch.Tensor:
        dist = self.reference_distributions(roll.prompts[i:j], roll.codes[i:j])
        return dist.float().gather(-1, roll.codes[i:j, ..., None])[..., 0]

    def advantages(self, reward: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """reward [B] (rows grouped by prompt, k each) -> advantage [B]."""
        k = self.cfg.samples_per_prompt
        if self.cfg.objective == "nash_md":  # reward: P(row > rival) [- kl]; 1/2 the control variate, unnormalised (TRL's)
            return (reward - 0.5).detach()
        if self.cfg.baseline == "rloo":
            adv = leave_one_out(reward, k).view(-1)
        elif self.cfg.baseline == "value":
            with torch.no_grad():
                states, mask = self.policy.encode_text(prompts)
                adv = reward - self.value(states, mask)
        else:
            adv = reward.clone()
        if self.cfg.normalize_advantages == "batch" and adv.numel() > 1:
            adv = adv / (adv.std() + 1e-6)
        elif self.cfg.normalize_advantages == "prompt" and k > 1:
            a = adv.view(-1, k)  # [P, k]
            adv = (a / (a.std(1, keepdim=True) + 1e-4)).view(-1)
        return adv.detach()

    def _diversity(self, audio: torch.Tensor, k: int) -> float:
        """Mean pairwise cosine distance of CLAP audio embeddings among the k clips of a prompt (over
        every process's prompts: each holds as many)."""
        clap = _find_clap(self.reward)
        if clap is None or k < 2:
            return float("nan")
        with torch.no_grad():
            emb = torch.nn.functional.normalize(clap.embed_audio(audio, self.policy.sample_rate).float(), dim=-1)
        emb = emb.view(-1, k, emb.shape[-1])  # [P, k, D]
        sim = emb @ emb.transpose(1, 2)  # [P, k, k]
        off = ~torch.eye(k, dtype=torch.bool, device=sim.device)
        return (self.ranks.sum((1 - sim[:, off]).mean()) / self.ranks.world).item()

    # ---- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step: int) -> dict:
        """Held-out prompts: mean reward components and KL to the reference; a few clips as WAV.
        With ema_decay, of the EMA weights: the model the checkpoint holds."""
        with self.ema_weights():
            return self._evaluate(step)

    def _evaluate(self, step: int) -> dict:
        from musicrl.audio import write_wav

        cfg, pol = self.cfg, self.policy
        was_training = getattr(self.reward, "training", None)
        if hasattr(self.reward, "eval"):
            self.reward.eval()
        roll = pol.sample(self.eval_prompts, 1, cfg.duration_s, sampling=cfg.sampling, seed=10**9 + cfg.seed)
        audio = pol.decode(roll.codes)
        _, components = self.reward(audio, pol.sample_rate, roll.prompts)
        if was_training and hasattr(self.reward, "train"):
            self.reward.train()
        dist = pol.distributions(roll.prompts, roll.codes, cfg.sampling)
        kl = exact_kl(dist, self.reference_distributions(roll.prompts, roll.codes)).sum((1, 2)).mean().item()
        sample_dir = self.out / "samples" / f"step-{step:06d}"
        sample_dir.mkdir(parents=True, exist_ok=True)
        for n in range(min(cfg.log_audio, len(roll.prompts)) if self.ranks.main else 0):
            write_wav(sample_dir / f"{n}.wav", audio[n, 0].cpu(), pol.sample_rate)
            (sample_dir / f"{n}.txt").write_text(roll.prompts[n] + "\n")
        out = {"step": step, "eval/kl_seq": kl}
        out.update({f"eval/{n}": v.float().mean().item() for n, v in components.items()})
        return out

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        """checkpoints/step-N/: the model in HF format (LoRA merged; with ema_decay, the EMA weights),
        tokenizer, trainer_state.pt (with ema_decay, also the live weights, for --resume).

        Written to a temporary directory and renamed: a crash never leaves a half checkpoint."""
        with self.ema_weights() as live:
            self._save_checkpoint(step, live)
        return ckpt.step_dir(self.out, step)

    def _save_checkpoint(self, step: int, live: list[torch.Tensor] | None) -> None:
        model = self.policy.model
        state = {
            "step": step, "config": asdict(self.cfg), "reference": self.cfg.reference or self.cfg.model,
            "votes_hash": self.votes_hash, "optimizer": self.opt.state_dict(), "decoder": ckpt.adapter_state(model),
            "value": self.value.state_dict() if self.value is not None else None,
            "live": live,
            "reward": self.reward.state_dict() if hasattr(self.reward, "state_dict") else None,
        }  # fmt: skip
        weights = None
        if self.sharded:  # whole tensors on rank 0, as one process writes them (every rank takes part)
            state, weights = distributed.full_state(state, self.ranks), distributed.full_state(model.state_dict(), self.ranks)
        self.ranks.write(lambda: ckpt.save(self.out, step, model, self.policy.tokenizer, state, self.cfg.keep_checkpoints,
                                           weights=weights))  # fmt: skip

    def load_checkpoint(self, path: Path) -> int:
        state = ckpt.load_state(path, asdict(self.cfg), "cpu" if self.sharded else self.device)
        ckpt.restore_model(self.policy.model, path, state)
        if self.ema is not None:  # the saved model is the EMA; the live weights are in the state
            with torch.no_grad():
                _copy(self.ema, [p.detach() for p in self.trained])
            if self.sharded:
                distributed.copy_full([p.data for p in self.trained], state["live"])
            else:
                with torch.no_grad():
                    torch._foreach_copy_([p.data for p in self.trained], [t.to(self.device) for t in state["live"]])
        self.opt.load_state_dict(distributed.shard_optimizer_state(state["optimizer"], self.opt) if self.sharded else state["optimizer"])
        if self.value is not None:
            self.value.load_state_dict(state["value"])
        if state["reward"] is not None:
            self.reward.load_state_dict(state["reward"])
        return int(state["step"])

    # ---- the loop -------------------------------------------------------------------------------
    def train(self, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> Path:
        """Run to `cfg.steps` (or `stop_after` steps of this call, for tests); returns the last checkpoint."""
        from tqdm.auto import tqdm

        main = self.ranks.main  # the process that logs, evaluates and writes (the others train alongside)
        start = ckpt.begin(self.out, asdict(self.cfg), resume, self.load_checkpoint, write=main)
        end = self.cfg.steps if stop_after is None else min(self.cfg.steps, start + stop_after)
        bar = tqdm(range(start, end), initial=start, total=self.cfg.steps, desc="RL", disable=not (progress and main))
        last = None
        for step in bar:
            metrics = self.step(step)
            if main:
                self._log(metrics, "metrics.csv")
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.4f}")
            done = step + 1
            if (done % self.cfg.eval_every == 0 or done == self.cfg.steps) and (main or self.sharded):
                ev = self.evaluate(done)  # (FSDP: on every rank, its forward passes are collective)
                if main:
                    self._log(ev, "eval.csv")
            if done % self.cfg.checkpoint_every == 0 or done == end:
                last = self.save_checkpoint(done)
            if done == self.cfg.steps and main:  # out_dir/final: the finished model, servable and loadable by path
                ckpt.write_final(self.out, last)
        self.ranks.barrier()  # final/ is complete when train returns on any process
        self._log.close()
        return last or ckpt.latest_checkpoint(self.out)


def online_dpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """Online DPO's loss, a scalar: the rows' token log-probs under the policy and the reference
    [b, K, T] and rewards [b], rows (2i, 2i+1) a prompt's pair. The clip the reward scores higher is
    chosen (the preference model's likelier label); a pair with equal rewards says nothing (0)."""
    # imported here: that module imports this one
    from musicrl.train.dpo_trainer import preference_loss

    ratio = (logp - ref_logp).sum((1, 2)).view(-1, 2)  # [P, 2]: log pi - log ref of each clip
    r = reward.view(-1, 2)  # [P, 2]
    first = (r[:, 0] > r[:, 1])[:, None]  # [P, 1]
    chosen, rejected = torch.where(first, ratio, ratio.flip(1)).unbind(1)  # [P] each
    tie = r[:, 0] == r[:, 1]
    losses = preference_loss(chosen, rejected, tie, loss="sigmoid", beta=beta)
    return torch.where(tie, torch.zeros_like(losses), losses).mean()


def _copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """torch._foreach_copy_, which FSDP's sharded tensors (DTensor) lack: for them, one copy a tensor."""
    if dst and type(dst[0]).__name__ == "DTensor":
        for d, s in zip(dst, src):
            d.copy_(s)
    else:
        torch._foreach_copy_(dst, src)


def _find_clap(reward):
    """The CLAP reward inside a (weighted or sequential) combination, for the diversity metric."""
    stages = getattr(reward, "stages", None) or [reward]
    for stage in stages:
        for r in getattr(stage, "rewards", {}).values():
            if hasattr(r, "embed_audio") and hasattr(r, "embed_text"):
                return r
    return None


def _votes_hash_of(reward_cfg: dict) -> str | None:
    """The vote-set hash recorded by `train-reward preference` in the preference model's directory."""
    hashes = []

    def walk(d):
        if isinstance(d, dict):
            if d.get("type") == "preference" and "model" in d:
                meta = Path(d["model"]) / "metrics.json"
                if meta.exists():
                    hashes.append(json.loads(meta.read_text()).get("votes_hash") or "")
            for v in d.values():
                walk(v)
        elif isinstance(d, list):
            for v in d:
                walk(v)

    walk(reward_cfg)
    if not hashes:
        return None
    return hashlib.sha256("|".join(hashes).encode()).hexdigest()[:16]
