"""Training and judging: the RL config and trainer, the checkpoint layout, and model comparison.

rl_config    RLConfig: every field of an RL run, validated
rl_trainer   RLTrainer: rollouts, rewards, advantages, KL-regularised policy-gradient updates
checkpoints  the run directory's checkpoint layout, shared with the app that serves it
evaluate     single-pair win rates with intervals, KL to a reference, plots
"""
