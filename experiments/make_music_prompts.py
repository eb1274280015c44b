"""Build the shipped prompt sets for real MusicGen checkpoints: configs/prompts/music-train.txt and
music-eval.txt (not a study: the one-off that writes those two files; rerunning it rewrites them).

Prompts are written the way people type into a music generator: a genre (often with an era), a
mood, a lead instrument, what backs it, production words, and a tempo in BPM or words, in several
sentence shapes, plus hand-written ones. The evaluation set is held out at the level of what a
prompt combines: no (genre, lead instrument) pair of an evaluation prompt occurs in training, and
its hand-written prompts are its own. Both files are deduplicated and disjoint.

    python experiments/make_music_prompts.py            # writes configs/prompts/music-{train,eval}.txt
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

GENRES = (
    "synthwave", "80s synthpop", "90s boom bap hip hop", "lo-fi hip hop", "trap", "drill", "deep house",
    "tech house", "minimal techno", "detroit techno", "trance", "drum and bass", "liquid drum and bass",
    "dubstep", "uk garage", "ambient", "dark ambient", "chillwave", "vaporwave", "indie rock", "garage rock",
    "70s hard rock", "grunge", "post-rock", "shoegaze", "punk", "heavy metal", "progressive metal",
    "classic soul", "70s funk", "disco", "motown", "r&b", "neo-soul", "gospel", "blues", "delta blues",
    "bebop jazz", "cool jazz", "jazz fusion", "bossa nova", "samba", "salsa", "reggaeton", "dancehall",
    "roots reggae", "dub", "afrobeat", "afrobeats", "highlife", "flamenco", "tango", "celtic folk",
    "americana", "bluegrass", "country", "60s surf rock", "baroque", "classical string quartet",
    "romantic-era piano", "minimalist classical", "film score", "epic orchestral", "video game chiptune",
    "16-bit video game", "k-pop", "j-pop", "city pop", "bollywood", "indian classical", "gamelan",
    "middle eastern", "balkan brass", "sea shanty", "lullaby", "musical theatre", "big band swing",
    "electro swing", "breakbeat", "industrial", "ebm", "hyperpop", "bedroom pop", "dream pop", "folk pop",
    # eras travel with their genres: "1950s" + "hyperpop" is not a thing people ask for
    "50s rock and roll", "1950s doo-wop", "60s psychedelic rock", "1960s soul", "70s prog rock", "1970s reggae",
    "80s hair metal", "80s new wave", "90s eurodance", "90s trip hop", "90s britpop", "2000s pop punk",
    "2000s crunk", "2010s edm", "2010s indie folk", "y2k pop", "modern pop", "modern country",
)
MOODS = (
    "uplifting", "melancholic", "dreamy", "energetic", "dark", "hopeful", "nostalgic", "tense", "playful",
    "romantic", "triumphant", "calm", "eerie", "aggressive", "bittersweet", "mysterious", "euphoric",
    "peaceful", "brooding", "cheerful", "somber", "groovy", "epic", "warm", "haunting", "carefree",
)
LEADS = (
    "piano", "grand piano", "rhodes electric piano", "wurlitzer", "hammond organ", "church organ",
    "acoustic guitar", "nylon-string guitar", "clean electric guitar", "distorted electric guitar",
    "slide guitar", "banjo", "mandolin", "ukulele", "sitar", "koto", "harp", "violin", "cello",
    "string section", "upright bass", "flute", "pan flute", "clarinet", "alto saxophone", "tenor saxophone",
    "trumpet", "muted trumpet", "trombone", "french horn", "brass section", "harmonica", "accordion",
    "steel drums", "marimba", "vibraphone", "glockenspiel", "kalimba", "music box", "analog synth",
    "supersaw synth", "arpeggiated synth", "FM bells", "808 bass", "reese bass", "wordless choir",
    "female vocal chops", "whistling", "bagpipes", "tabla", "oud", "erhu", "shakuhachi",
)
BACKING = (
    "a walking bass line", "a four-on-the-floor kick", "punchy breakbeats", "brushed jazz drums",
    "a laid-back swung groove", "tight funk drums", "booming 808s and crisp hi-hats", "a shuffle beat",
    "a driving rock beat", "soft hand percussion", "lush string pads", "warm analog pads",
    "a pulsing bassline", "fingerpicked guitar", "staccato strings", "huge taiko drums", "a slap bass groove",
    "gentle rain ambience", "a choir in the background", "a drone", "syncopated congas", "a rolling bassline",
    "sidechained pads", "tambourine and handclaps", "a marching snare", "no drums",
)
PRODUCTION = (
    "lo-fi tape saturation", "vinyl crackle", "wide stereo reverb", "gated reverb drums", "crisp modern mix",
    "warm analog mix", "heavy sidechain compression", "live room recording", "dry and intimate",
    "spacious and cinematic", "bit-crushed", "radio-ready master", "muffled as if from another room",
    "hall reverb", "tape delay", "clean studio production", "raw demo feel", "dusty samples",
)
TEMPO_WORDS = ("slow", "mid-tempo", "upbeat", "fast", "very slow", "driving", "relaxed", "brisk")
SETTINGS = (
    "for a film trailer", "for studying", "for a video game boss fight", "for a rainy night drive",
    "for a wedding dance", "for a sunrise yoga session", "for a heist scene", "for a cooking show",
    "for a fantasy tavern", "for a space documentary", "for a sports highlight reel", "for a café",
    "for a horror movie", "for a podcast intro", "for a summer beach party", "for falling asleep",
)

TEMPLATES = (
    "{mood} {genre} with {lead} and {backing}, {bpm} bpm",
    "{mood} {genre}, {lead} lead, {backing}, {production}",
    "{tempo} {genre} track with a {mood} {lead} melody over {backing}",
    "a {mood} {genre} song {setting}, featuring {lead}",
    "{genre} instrumental, {mood}, {lead} and {backing}, {bpm} bpm",
    "{genre} beat, {mood} {lead}, {production}, {bpm} bpm",
    "{tempo}, {mood} {genre} {setting}, {backing}",
    "{lead} solo over {backing}, {mood} {genre} feel, {production}",
    "{mood} {genre} with {lead}, {production}",
    "instrumental {genre}: {lead}, {backing}, {tempo} and {mood}",
)

# Hand-written, in the voice of people trying a music generator.
CURATED_TRAIN = (
    "chill lofi beat with jazzy piano chords and soft rain in the background",
    "epic orchestral battle music with choir, brass and thundering drums",
    "happy ukulele tune for a kids' cartoon",
    "dark techno at 130 bpm with a rumbling kick and metallic percussion",
    "sad piano ballad, slow, with a lonely cello",
    "80s action movie montage music with big synths and gated drums",
    "relaxing spa music with harp, flute and gentle water sounds",
    "funky disco groove with slap bass, strings and a four on the floor beat",
    "medieval tavern music with lute, fiddle and a drum",
    "retro 8-bit video game level theme, fast and cheerful",
    "cinematic ambient drone that slowly builds tension",
    "smooth jazz saxophone over a mellow electric piano, late night vibe",
    "upbeat country song with banjo, fiddle and a train beat",
    "heavy metal riff with double kick drums and a screaming guitar solo",
    "reggae groove with offbeat guitar skanks and a deep bassline",
    "latin jazz with congas, timbales and a bright trumpet",
    "minimal piano piece in the style of erik satie",
    "spooky halloween music with music box and creepy strings",
    "driving synthwave for a night drive through a neon city",
    "gospel choir with hammond organ and handclaps, joyful",
    "bollywood dance track with tabla, sitar and a catchy synth hook",
    "irish jig with tin whistle, fiddle and bodhran",
    "trap beat with hard 808s, rolling hi-hats and a dark bell melody",
    "bossa nova with nylon guitar and soft brushes, sunny afternoon",
    "deep house with a warm bassline, soulful chords and a steady groove",
    "drum and bass with a rolling reese bass and chopped amen breaks",
    "acoustic folk song with fingerpicked guitar and harmonica",
    "baroque harpsichord piece, lively and ornate",
    "dreamy shoegaze wall of guitars with washed out vocals",
    "afrobeat jam with horns, shekere and interlocking guitars",
    "calm meditation music with singing bowls and a low drone",
    "big band swing with a walking bass and punchy brass hits",
    "sunny tropical house with steel drums and marimba",
    "tense thriller underscore with pulsing synths and ticking percussion",
    "nostalgic 90s r&b slow jam with smooth keys",
    "celtic harp melody, peaceful and pastoral",
    "cyberpunk industrial beat with distorted bass and glitchy drums",
    "romantic string quartet, slow and tender",
    "punk rock with fast power chords and shouty energy, no vocals",
    "lullaby with music box and soft pads",
)
CURATED_EVAL = (
    "calm lo-fi study beat with a mellow guitar loop and vinyl hiss",
    "heroic fantasy theme with french horns and a full orchestra",
    "upbeat summer pop with bright synths and handclaps, 120 bpm",
    "melancholic solo violin in a large cathedral",
    "groovy 70s funk with wah guitar and a tight drum break",
    "haunting ambient soundscape with distant bells",
    "energetic k-pop dance track with punchy drums and synth stabs",
    "slow blues with a crying electric guitar and organ",
    "cheerful marimba melody for a morning commercial",
    "dark cinematic trailer with booming hits and rising strings",
    "jazz trio ballad with brushed drums, upright bass and piano",
    "fast bluegrass breakdown with banjo and mandolin",
    "peaceful japanese garden music with koto and shakuhachi",
    "euphoric trance anthem with a soaring supersaw lead, 138 bpm",
    "moody trip hop with dusty drums and a lonely trumpet",
    "playful pizzicato strings for a sneaky cartoon scene",
    "warm acoustic guitar and cello duet, intimate",
    "retro chiptune boss battle, frantic and intense",
    "flamenco guitar with passionate handclaps",
    "soulful neo-soul groove with rhodes and a laid-back beat",
    "epic viking war drums with throat singing and horns",
    "dreamy synth-pop with shimmering arpeggios, 1985",
    "a gentle piano lullaby for a baby",
    "aggressive dubstep drop with growling bass",
    "sunny reggae with a melodica lead",
    "mysterious middle eastern oud melody over frame drums",
    "upbeat swing with clarinet and a walking bass",
    "sparse minimal techno, hypnotic, 125 bpm",
    "nostalgic city pop with slap bass and bright electric piano",
    "triumphant brass fanfare for an award ceremony",
    "rainy day jazz cafe piano",
    "tense horror drone with scraping strings",
    "carefree ukulele and whistling for a travel vlog",
    "powerful gospel organ and choir build",
    "hypnotic gamelan with layered metallophones",
    "driving indie rock with jangly guitars and a steady beat",
    "somber funeral march with low brass",
    "bouncy afrobeats groove with log drums and shakers",
    "ethereal dream pop with reverb-drenched guitar",
    "classic motown groove with tambourine and horns",
)


def _fill(rng: random.Random, template: str, genre: str, lead: str) -> str:
    return template.format(
        genre=genre, lead=lead, mood=rng.choice(MOODS), backing=rng.choice(BACKING), production=rng.choice(PRODUCTION),
        tempo=rng.choice(TEMPO_WORDS), setting=rng.choice(SETTINGS), bpm=rng.randrange(60, 181, 2),
    )


def build(n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, eval): templated prompts over disjoint (genre, lead) pairs plus the curated ones."""
    rng = random.Random(seed)
    pairs = [(g, lead) for g in GENRES for lead in LEADS]
    rng.shuffle(pairs)
    held = set(pairs[: len(pairs) // 8])  # an eighth of the combinations are only ever evaluation

    def draw(n: int, allowed, seen: set[str]) -> list[str]:
        pool = [p for p in pairs if (p in held) == allowed]
        out: list[str] = []
        while len(out) < n:
            genre, lead = rng.choice(pool)
            text = _fill(rng, rng.choice(TEMPLATES), genre, lead)
            text = re.sub(r"\ba (?=[aeiou])", "an ", text.replace("  ", " ").strip())
            if text.lower() not in seen:
                seen.add(text.lower())
                out.append(text)
        return out

    seen = {p.lower() for p in CURATED_TRAIN + CURATED_EVAL}
    evaluation = list(CURATED_EVAL) + draw(n_eval - len(CURATED_EVAL), True, seen)
    train = list(CURATED_TRAIN) + draw(n_train - len(CURATED_TRAIN), False, seen)
    return train, evaluation


HEADER = """# {what} for real MusicGen checkpoints (configs/rl/small/*), in the style people type into a
# music generator: genre (with its era), mood, lead instrument, backing, production, tempo, use. Written by the
# musicrl project, templated from fixed word lists plus hand-written prompts, by
# experiments/make_music_prompts.py; released under the project's license. {n} prompts. The two files
# share no prompt, and no (genre, lead instrument) pair of a templated music-eval prompt is in music-train.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--eval", type=int, default=240)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "configs" / "prompts"))
    args = ap.parse_args(argv)
    train, evaluation = build(args.train, args.eval, args.seed)
    for name, prompts, what in (("music-train", train, "Training prompts"), ("music-eval", evaluation, "Held-out evaluation prompts")):
        (Path(args.out) / f"{name}.txt").write_text(HEADER.format(what=what, n=len(prompts)) + "\n".join(prompts) + "\n")
        print(f"{name}: {len(prompts)} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
