"""Step-GRPO math: group advantages and the clipped-surrogate loss with KL and entropy terms (pure functions)."""
