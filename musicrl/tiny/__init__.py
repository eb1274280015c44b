"""The tiny world: small models we train ourselves on `musicrl.synth`, shipped under `musicrl/assets/tiny/`."""
