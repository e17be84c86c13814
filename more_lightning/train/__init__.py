"""Training with Step-GRPO: the LightningModule, the rollout callback, the warm start, step metrics, strategies, run
logging, adapter checkpoints, resume checks and the LightningCLI behind ``fit``."""
