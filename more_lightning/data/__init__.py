"""Readers for the official Step-GRPO trajectories and the six QA formats."""
