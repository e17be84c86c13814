"""Training with Step-GRPO: the LightningModule, the rollout callback, the warm start, step metrics, strategies, run
logging, adapter checkpoints and resume checks."""
