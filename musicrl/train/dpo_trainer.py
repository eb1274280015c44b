"""Offline preference optimisation of MusicGen from A/B votes: DPO, IPO and conservative DPO.

One step, top to bottom (`DPOTrainer.step`):
  1. the step's `batch_size` preference pairs (a chosen and a rejected clip's codes under one prompt),
     in a fresh shuffled order each pass over the pairs: a pure function of (seed, step);
  2. both clips' teacher-forced log-probs under the policy and under the reference, with the
     temperature and guidance of sampling, through the RL trainer's own path
     (`musicrl.train.tuning.teacher_forced` and `reference_distributions`);
  3. the loss on h = [log pi(c) - log ref(c)] - [log pi(r) - log ref(r)] (log-probs summed over the
     clip's K x T tokens): 'sigmoid' (DPO), 'conservative' (label-smoothed DPO) or 'ipo'; gradient
     accumulation over micro-batches of pairs.
Metrics: the implicit rewards beta * (log pi - log ref) of the chosen and rejected clips, their margin
and accuracy (the share of decisive pairs whose chosen clip has the larger implicit reward, an equal
one counting half: 0.5 at step 0), the
clips' log-probs, and the exact KL(pi || ref) over the codebook along the clips. At step 0 the policy
is the reference: the implicit rewards are 0 and the DPO loss is ln 2.

Ties and both-bad votes are `musicrl.train.pairs`' (dropped; IPO may keep ties with a zero target).
The trainer is handed its pairs and opens no database. LoRA, the reference (a frozen copy, another
checkpoint, or the adapters switched off), checkpoints and the metrics log are the RL trainer's
(`musicrl.train.tuning`, `musicrl.train.checkpoints`): `--resume` continues exactly, and
`musicrl app --models-dir` serves each new checkpoint as it does for RL.

Under torchrun (`musicrl.train.distributed`, docs/scaling-out.md) each process scores its contiguous
share of the step's pairs, each pair weighted by 1 / batch_size as in one process; the gradients are
summed before one optimizer step and the per-pair scores gathered for the metrics, so the update and
the metrics are one process's. Rank 0 logs, evaluates and writes the checkpoints; with `fsdp`
(`distributed.shard`) every rank evaluates, FSDP's forward passes being collective.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from musicrl.errors import UserError
from musicrl.model.device import resolve_device
from musicrl.model.policy import MusicGenPolicy
from musicrl.train import checkpoints as ckpt
from musicrl.train import distributed, tuning
from musicrl.train.pairs import PreferencePair
from musicrl.train.po_config import DPOConfig
from musicrl.train.rl_trainer import exact_kl


def preference_loss(logratio_chosen: torch.Tensor, logratio_rejected: torch.Tensor, tie: torch.Tensor, *, loss: str,
                    beta: float, label_smoothing: float = 0.0, tokens_chosen=None, tokens_rejected=None) -> torch.Tensor:
    """Per-pair losses [P] from the clips' log-ratios log pi - log ref [P] (summed over their tokens).

    sigmoid:      -log sigmoid(beta h)                                  (DPO, Rafailov et al. 2023)
    conservative: -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)  (cDPO, e = label_smoothing)
    ipo:          (h' - 1 / (2 beta))^2, h' the difference of per-token mean log-ratios, and target 0
                  for a tie (IPO, Azar et al. 2023; the per-token mean as TRL's IPO)
    """
    if loss == "ipo":
        h = logratio_chosen / tokens_chosen - logratio_rejected / tokens_rejected
        target = torch.where(tie, torch.zeros_like(h), torch.full_like(h, 1 / (2 * beta)))
        return (h - target) ** 2
    eps = label_smoothing if loss == "conservative" else 0.0
    h = logratio_chosen - logratio_rejected
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


class DPOTrainer:
    def __init__(self, cfg: DPOConfig, pairs: list[PreferencePair], eval_pairs: list[PreferencePair] = (),
                 policy: MusicGenPolicy | None = None, reference: MusicGenPolicy | None = None,
                 votes_hash: str | None = None):  # fmt: skip
        """`pairs`: what is trained on; `eval_pairs`: held out, scored every `eval_every` steps;
        `votes_hash`: the vote set's (`musicrl.votes.rows.votes_hash`), recorded in the checkpoints."""
        if not pairs:
            raise UserError("no preference pairs to train on")
        self.cfg = cfg
        self.ranks, self.device = distributed.join(resolve_device(cfg.device))
        self.ranks.share(cfg.batch_size, "batch_size")  # (a one-line error if they do not split)
        share = cfg.batch_size // self.ranks.world
        if share % cfg.grad_accum:
            raise UserError(f"each of the {self.ranks.world} processes has {share} pairs a step, not divisible by grad_accum={cfg.grad_accum}")
        self.out = Path(cfg.out_dir)
        self.pairs, self.eval_pairs = list(pairs), list(eval_pairs)
        self.policy = policy or MusicGenPolicy.from_pretrained(cfg.model, device=self.device)
        self.reference = tuning.prepare_policy(self.policy, cfg, self.device, reference)  # None with LoRA: adapters off
        self.sharded = cfg.fsdp and distributed.shard(self.ranks, self.policy, self.reference)  # FSDP: 1/world of each
        self.trained = [p for p in self.policy.model.decoder.parameters() if p.requires_grad]
        self.ranks.broadcast(self.trained)  # as DDP does: every process starts from rank 0's weights
        self.opt = torch.optim.AdamW(self.trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.votes_hash = votes_hash
        self._log = tuning.MetricsLog(self.out)
        self._orders: dict[int, np.ndarray] = {}

    # ---- data --------------------------------------------------------------------------------
    def batch_for(self, step: int) -> list[PreferencePair]:
        """The pairs of a step: positions step*B .. step*B+B-1 of a stream of shuffled passes over the
        pairs (pass e shuffled by (seed, e)), so every pair is seen once per pass."""
        n, bs = len(self.pairs), self.cfg.batch_size
        batch = []
        for i in range(step * bs, (step + 1) * bs):
            epoch, pos = divmod(i, n)
            if epoch not in self._orders:  # (only the current pass is kept)
                self._orders = {epoch: np.random.default_rng([self.cfg.seed, epoch]).permutation(n)}
            batch.append(self.pairs[self._orders[epoch][pos]])
        return batch

    # ---- log-probs ---------------------------------------------------------------------------
    def sequence_logps(self, prompts: list[str], codes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per clip [N]: `logp` (the policy's, summed over its tokens; differentiable when grad is on),
        `ref` (the reference's), both over the first `coarse_codebooks` codebooks (default all), `tokens`
        (how many tokens that is), `kl` (exact KL(pi || ref) summed along the whole clip), `all_tokens` (K x T).
        Clips of one length go through the model together."""
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(codes):
            groups.setdefault(tuple(c.shape), []).append(i)
        if self.sharded and len(set(self.ranks.gather(torch.tensor([len(groups)], device=self.device)).tolist())) > 1:
            raise UserError("fsdp: the processes' pairs hold clips of different lengths, so they would run different "
                            "forward passes; use fsdp=false, or votes on clips of one duration")  # fmt: skip
        out = {k: [None] * len(codes) for k in ("logp", "ref", "kl", "tokens", "all_tokens")}
        for idx in groups.values():
            c = torch.stack([codes[i] for i in idx]).to(self.device)
            p = [prompts[i] for i in idx]
            with tuning.autocast(self.cfg.mixed_precision, self.device):
                dist, logp = tuning.teacher_forced(self.policy, p, c, self.cfg.sampling)  # [b, K, T, V], [b, K, T]
            ref = tuning.reference_distributions(self.policy, self.reference, p, c, self.cfg.sampling,
                                                 self.cfg.mixed_precision).float()  # fmt: skip
            ref_logp = ref.gather(-1, c[..., None])[..., 0]  # [b, K, T]
            coarse = slice(0, self.cfg.coarse_codebooks or None)  # the codebooks h is summed over
            ones = torch.ones(len(idx), device=self.device)  # [b]
            values = {"logp": logp[:, coarse].sum((1, 2)), "ref": ref_logp[:, coarse].sum((1, 2)),
                      "tokens": ones * c[0, coarse].numel(), "kl": exact_kl(dist.detach(), ref).sum((1, 2)),
                      "all_tokens": ones * c[0].numel()}  # fmt: skip
            for name, v in values.items():
                for j, i in enumerate(idx):
                    out[name][i] = v[j]
        return {k: torch.stack(v) for k, v in out.items()}

    def score(self, pairs: list[PreferencePair]) -> dict[str, torch.Tensor]:
        """Per pair [P]: the losses and every quantity the metrics are made of."""
        P = len(pairs)
        s = self.sequence_logps([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs])
        out = {f"{k}_{side}": v[sl] for k, v in s.items() for side, sl in (("c", slice(0, P)), ("r", slice(P, None)))}
        out["tie"] = torch.tensor([p.tie for p in pairs], device=self.device)
        cfg = self.cfg
        out["loss"] = preference_loss(out["logp_c"] - out["ref_c"], out["logp_r"] - out["ref_r"], out["tie"], loss=cfg.loss,
                                      beta=cfg.beta, label_smoothing=cfg.label_smoothing, tokens_chosen=out["tokens_c"],
                                      tokens_rejected=out["tokens_r"])  # fmt: skip
        if cfg.rpo_alpha:  # a kept tie has no chosen clip to pull up
            out["loss"] = out["loss"] + cfg.rpo_alpha * torch.where(out["tie"], 0.0, -out["logp_c"] / out["tokens_c"])
        return out

    def summary(self, s: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
        """Scores of many pairs -> the logged means (implicit rewards, accuracy, margin, log-probs, KL)."""
        beta = self.cfg.beta
        rc, rr = beta * (s["logp_c"] - s["ref_c"]), beta * (s["logp_r"] - s["ref_r"])
        decisive = ~s["tie"]
        won = (rc > rr).float() + 0.5 * (rc == rr).float()  # equal implicit rewards: half (all of them at step 0)
        m = {
            "loss": s["loss"].mean(), "rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(),
            "rewards/margin": (rc - rr)[decisive].mean(), "rewards/accuracy": won[decisive].mean(),
            "logps/chosen": s["logp_c"].mean(), "logps/rejected": s["logp_r"].mean(),
            "kl": (s["kl_c"] + s["kl_r"]).sum() / (s["all_tokens_c"] + s["all_tokens_r"]).sum(),
            "kl_seq": torch.cat([s["kl_c"], s["kl_r"]]).mean(),
        }  # fmt: skip
        return {prefix + k: v.item() for k, v in m.items()}

    # ---- the step -----------------------------------------------------------------------------
    def step(self, step: int) -> dict:
        cfg = self.cfg
        t = time.perf_counter()
        if self.device.type == "cuda":  # the step's own peak
            torch.cuda.reset_peak_memory_stats(self.device)
        tuning.eval_mode(self.policy)  # no dropout: the distributions are those of sampling
        batch = self.batch_for(step)
        batch = batch[self.ranks.share(len(batch), "batch_size")]  # ours (all of them in one process)
        mb = len(batch) // cfg.grad_accum
        parts = []
        for i in range(0, len(batch), mb):
            s = self.score(batch[i : i + mb])
            (s["loss"].mean() / (cfg.grad_accum * self.ranks.world)).backward()  # each pair weighs 1 / batch_size
            parts.append({k: v.detach() for k, v in s.items()})
        self.ranks.sum_grads(self.trained)  # the global batch's gradient on every process
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trained, cfg.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        stats = {k: self.ranks.gather(torch.cat([p[k] for p in parts])) for k in parts[0]}  # [batch_size] each
        metrics = {"step": step + 1, **self.summary(stats), "grad_norm": float(grad_norm), "lr": self.opt.param_groups[0]["lr"]}
        metrics["time/step"] = time.perf_counter() - t
        if self.device.type == "cuda":
            metrics["mem/peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return metrics

    @torch.no_grad()
    def evaluate(self, step: int) -> dict | None:
        """The held-out pairs' loss, implicit-reward accuracy and margin, and KL; None without any."""
        if not self.eval_pairs:
            return None
        self.policy.eval()
        bs = self.cfg.batch_size
        parts = [self.score(self.eval_pairs[i : i + bs]) for i in range(0, len(self.eval_pairs), bs)]
        return {"step": step, **self.summary({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, "eval/")}

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> Path:
        """checkpoints/step-N/ in the RL trainer's layout: the model (LoRA merged), its tokenizer, and
        trainer_state.pt (optimizer, step, config, reference, vote-set hash, LoRA adapters)."""
        model = self.policy.model
        state = {"step": step, "config": asdict(self.cfg), "reference": self.cfg.reference or self.cfg.model,
                 "votes_hash": self.votes_hash, "optimizer": self.opt.state_dict(), "decoder": ckpt.adapter_state(model)}
        weights = None
        if self.sharded:  # whole tensors on rank 0, as one process writes them (every rank takes part)
            state, weights = distributed.full_state(state, self.ranks), distributed.full_state(model.state_dict(), self.ranks)
        self.ranks.write(lambda: ckpt.save(self.out, step, model, self.policy.tokenizer, state, self.cfg.keep_checkpoints,
                                           weights=weights))  # fmt: skip
        return ckpt.step_dir(self.out, step)

    def load_checkpoint(self, path: Path) -> int:
        state = ckpt.load_state(path, asdict(self.cfg), "cpu" if self.sharded else self.device)
        ckpt.restore_model(self.policy.model, path, state)
        self.opt.load_state_dict(distributed.shard_optimizer_state(state["optimizer"], self.opt) if self.sharded else state["optimizer"])
        return int(state["step"])

    # ---- the loop -------------------------------------------------------------------------------
    def train(self, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> Path:
        """Run to `cfg.steps` (or `stop_after` steps of this call, for tests); returns the last
        checkpoint. Writes out_dir/final at the end, and dpo.png (the metrics over the steps)."""
        from tqdm.auto import tqdm

        from musicrl.train.evaluate import plot_preference_run

        main = self.ranks.main  # the process that logs, evaluates and writes (the others train alongside)
        start = ckpt.begin(self.out, asdict(self.cfg), resume, self.load_checkpoint, write=main)
        evaluates = main or self.sharded  # (FSDP: every rank, its forward passes are collective)
        if start == 0 and evaluates and (first := self.evaluate(0)) is not None and main:
            self._log(first, "eval.csv")
        end = self.cfg.steps if stop_after is None else min(self.cfg.steps, start + stop_after)
        bar = tqdm(range(start, end), initial=start, total=self.cfg.steps, desc=f"DPO ({self.cfg.loss})",
                   disable=not (progress and main))  # fmt: skip
        last = None
        for step in bar:
            metrics = self.step(step)
            if main:
                self._log(metrics, "metrics.csv")
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['rewards/accuracy']:.2f}", kl=f"{metrics['kl']:.4f}")
            done = step + 1
            due = done % self.cfg.eval_every == 0 or done == self.cfg.steps
            if due and evaluates and (ev := self.evaluate(done)) is not None and main:
                self._log(ev, "eval.csv")
            if done % self.cfg.checkpoint_every == 0 or done == end:
                last = self.save_checkpoint(done)
            if done == self.cfg.steps and main:
                ckpt.write_final(self.out, last)
        self._log.close()
        if end > start and main:
            plot_preference_run(self.out)
        self.ranks.barrier()  # final/ and the plot are complete when train returns on any process
        return last or ckpt.latest_checkpoint(self.out)
