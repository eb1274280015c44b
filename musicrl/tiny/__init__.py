"""The tiny world: a synthetic music corpus and small models trained on it, shipped under
`musicrl/assets/tiny/`, so the whole loop runs offline on a CPU. It depends on the core; the core,
the app and the rewards never import it. Only the commands, tests and benchmarks bring it in.

synth, degrade        the corpus (captioned clips) and graded degradations
attributes, adherence what a clip sounds like (tempo, register, mode, drums) and whether it is what
                      its prompt asked for (also the oracle adherence reward)
simulate              simulated raters with a hidden taste, their votes and judgement
prompts               prompt sets by name ('synth', 'synth-unseen', 'synth-heldout')
codec, lm, clap, text, quality, musicgen, bootstrap   the tiny models' trainers
"""
