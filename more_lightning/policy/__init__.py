"""The policy: loading (quantisation, LoRA, model sources), sampling, and the shared-prompt forward pass."""
