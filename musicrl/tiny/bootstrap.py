"""`musicrl bootstrap tiny`: rebuild the whole tiny world from nothing, stage by stage.

  codec    the spectral codec, codebooks fitted by k-means on the corpus (musicrl.tiny.codec)
  lm       the tiny MusicGen LM, on (caption, codes) of that codec   (musicrl.tiny.lm)
  clap     the tiny CLAP, contrastive on (caption, audio), clean and through that codec (musicrl.tiny.clap)
  quality  the MOS head on frozen tiny-CLAP embeddings, on graded degradations (musicrl.tiny.quality)

A stage whose output directory holds a finished model (config.json) is skipped; an interrupted stage
resumes from its own checkpoint under OUT/work/<stage> (the codec takes about two minutes and just
reruns). The shipped `musicrl/assets/tiny` is this command's output; docs/tiny.md (the model card)
gives how long each stage takes and what each model measures.
"""

from __future__ import annotations

import time
from pathlib import Path

STAGES = ("codec", "lm", "clap", "quality")


def bootstrap(out: str | Path, stages: tuple[str, ...] = STAGES, progress: bool = True) -> dict:

    from musicrl.errors import UserError

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    out = Path(out)
    work = out / "work"
    dirs = {"codec": out / "codec", "lm": out / "musicgen", "clap": out / "clap", "quality": out / "quality"}
    timings = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        if (dirs[stage] / "config.json").exists():
            print(f"[bootstrap] {stage}: done already ({dirs[stage]})")
            continue
        t = time.time()
        print(f"[bootstrap] {stage} -> {dirs[stage]}")
        if stage == "codec":
            from musicrl.tiny.codec import CodecFitConfig, train_codec

            train_codec(dirs["codec"], CodecFitConfig(), progress=progress)
        elif stage == "lm":
            if not (dirs["codec"] / "config.json").exists():
                raise UserError(f"the lm stage needs the codec first ({dirs['codec']})")
            from musicrl.tiny.lm import LMTrainConfig, train_lm

            train_lm(dirs["codec"], dirs["lm"], LMTrainConfig(), progress=progress, work_dir=work / "lm")
        elif stage == "clap":
            if not (dirs["codec"] / "config.json").exists():
                raise UserError(f"the clap stage needs the codec first ({dirs['codec']})")
            from musicrl.tiny.clap import ClapTrainConfig, train_clap

            cfg = ClapTrainConfig(codec=str(dirs["codec"]))
            train_clap(dirs["clap"], cfg, progress=progress, work_dir=work / "clap")
        elif stage == "quality":
            if not (dirs["clap"] / "config.json").exists():
                raise UserError(f"the quality stage needs the clap first ({dirs['clap']})")
            from musicrl.tiny.quality import train_tiny_quality

            train_tiny_quality(dirs["quality"], backbone=str(dirs["clap"]))
        timings[stage] = time.time() - t
        print(f"[bootstrap] {stage}: {timings[stage] / 60:.1f} min")
    return timings
