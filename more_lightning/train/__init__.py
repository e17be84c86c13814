"""Training with Step-GRPO: what ``fit`` needs beyond the LightningModule, data module and rollout callback."""
