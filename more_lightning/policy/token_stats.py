"""Log-probs and entropies of chosen tokens, without the ``(tokens, vocab)`` logits of all of them at once.

The model's forward pass runs as usual, except that its output head (``lm_head``) gets an empty slice: a pre-hook
keeps the head's input, the hidden states of the kept positions, which are ``hidden / vocab`` the size of their
logits (3,584 vs 152,064 floats a token for Qwen2.5-VL-7B). The callers pick the positions that predict completion
tokens from them; :func:`chunked_token_stats` then runs the head on ``chunk_tokens`` of those positions at a time and
keeps two floats a token (log-prob, entropy). Under autograd each chunk is checkpointed: its logits are recomputed
in the backward pass instead of being kept, so the training forward holds at most one chunk's logits too.

The arithmetic per token is the plain one (``logits.float()``, ``logsumexp``, the softmax for the entropy), so the
numbers equal those of the full logits tensor (``tests/test_token_stats.py``). Models that transform their logits
after the head (Gemma 2's final soft-capping) are refused: the head's output would not be their logits.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_TOKENS = 512
"""Tokens whose logits exist at once: 512 × 152,064 fp32 logits are 0.3 GiB (a few such copies at the peak)."""


def check_plain_head(model) -> None:
    """Refuse models whose logits are not ``lm_head(hidden)`` (soft-capped or scaled after the head)."""
    config = model.config
    text = getattr(config, "text_config", None) or config
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(text, name, None) not in (None, 1, 1.0):
            raise ValueError(
                f"{type(model).__name__} transforms its logits after the output head ({name} = "
                f"{getattr(text, name)}); chunked log-probs compute lm_head(hidden) and would be wrong for it"
            )


def head_inputs(model, inputs: dict[str, torch.Tensor], keep: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The output head and its input for the last ``keep`` positions, ``(batch, keep, hidden)``, from one forward
    pass of ``model`` in which the head itself computes nothing."""
    check_plain_head(model)
    head = model.get_output_embeddings()
    kept: list[torch.Tensor] = []

    def keep_and_skip(module, args):
        kept.append(args[0])
        return (args[0][..., :0, :],)

    handle = head.register_forward_pre_hook(keep_and_skip)
    try:
        model(**inputs, logits_to_keep=keep, use_cache=False)
    finally:
        handle.remove()
    return head, kept[-1]


def _stats(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, with_entropy: bool):
    logits = head(hidden).float()
    normaliser = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normaliser
    if not with_entropy:
        return logprobs, None
    return logprobs, normaliser - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def chunked_token_stats(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    with_entropy: bool = True,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``targets`` (any shape ``S``) under ``head(hidden)`` (``hidden``: ``S + (hidden size,)``), and
    the entropies if asked: fp32 tensors of shape ``S``, computed ``chunk_tokens`` tokens at a time."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    shape = targets.shape
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    recompute = torch.is_grad_enabled() and flat_hidden.requires_grad
    logprobs, entropies = [], []
    for start in range(0, flat_targets.numel(), chunk_tokens):
        piece = (head, flat_hidden[start : start + chunk_tokens], flat_targets[start : start + chunk_tokens])
        if recompute:
            logprob, entropy = checkpoint(_stats, *piece, with_entropy, use_reentrant=False)
        else:
            logprob, entropy = _stats(*piece, with_entropy)
        logprobs.append(logprob)
        entropies.append(entropy)
    entropy = torch.cat(entropies).reshape(shape) if with_entropy else None
    return torch.cat(logprobs).reshape(shape), entropy
