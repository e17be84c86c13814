"""more_lightning: Mixture-of-Retrieval-Experts (MoRE) trained with Step-GRPO on PyTorch Lightning.

A policy (multi)modal LLM routes each reasoning step to a retrieval expert (text, text-image, table or none); every
expert is a Weaviate collection. Training is Step-GRPO: each step prompt is its own GRPO group. See ``docs/``.
"""

__version__ = "0.1.0"
