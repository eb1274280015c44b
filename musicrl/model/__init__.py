"""The model: a MusicGen LM over codec tokens (policy), its sampling distribution, the fast rollout
engine, the frozen codec, the delay pattern, and loading by name, directory or hub id.

policy          MusicGenPolicy: sample with exact log-probs; teacher-forced distributions for training
sampling        SamplingConfig and the one sampling distribution (guidance, temperature, top-k/p, noise)
engine          FastSampler: the same samples as `policy.sample`, faster (static KV cache, CUDA graphs)
codec           Codec: audio <-> codes through any EnCodec-API model
spectral_codec  the tiny world's codec architecture, registered with transformers' Auto classes
delay           MusicGen's delay pattern, applied and undone exactly
generator       Generator: prompt -> clips with their seed and settings, for the CLI and the app
delta           a fine-tune shipped as its fp16 difference from a base (the shipped `tiny-r`)
hub, device     where models come from; which device a run uses
realsize        musicgen-small/-medium/-large configurations, for tests and benchmarks with random weights
"""
