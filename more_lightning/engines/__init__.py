"""Rollout engines: who samples the policy's completions (HF ``generate`` in-process, or a vLLM server)."""
