"""Stage contracts: where every output lives, and the manifest that says what it was made from.

Two rules hold for every stage (data, train, generate, judge, report):

* **Every output is a function of its inputs.** A stage's output folder holds a
  ``manifest.json``, written *last* and atomically: the stage name, the hash of the
  stage's own config section, the fingerprints of its inputs (upstream manifests, model
  weights, question files...) and the package version. Its ``fingerprint`` is the hash of
  (stage, config hash, inputs): the identity of the output. A stage whose manifest
  fingerprint equals the one it would produce now does no work; otherwise it redoes what
  changed and says why (`describe_changes`).
* **One run layout computes every path once.** `RunLayout` maps each stage to its output
  folder: ``<root>/<folder>`` by default, or wherever the user sent it with ``--out``.
  A stage run with ``--out X`` registers X in ``<root>/layout.json``, so a later stage run
  on its own (``ja-instruct generate RECIPE`` after ``ja-instruct train RECIPE --out X``)
  reads its upstream's manifest from X, never from a guessed path.

A stage never reads another stage's internals: only its manifest and its documented
output files.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ja_instruct.io import read_json, stable_hash, write_json

MANIFEST = "manifest.json"
LAYOUT = "layout.json"

# stage -> default folder name under the run root (the generate stage writes "answers").
STAGE_FOLDERS: dict[str, str] = {
    "data": "data",
    "pairs": "pairs",
    "train": "train",
    "generate": "answers",
    "judge": "judge",
    "report": "report",
}


def _version() -> str:
    from ja_instruct import __version__

    return __version__


@dataclass
class Manifest:
    """What a stage's output was made from; ``<out>/manifest.json``.

    Attributes:
        stage: the stage that wrote it (``data``, ``train``, ``generate``, ``judge``, ``report``).
        fingerprint: identity of the output: ``stable_hash(stage, config_hash, inputs)``.
        config_hash: hash of the stage's resolved config section (the keys that change the result).
        inputs: input name -> fingerprint (``{"data": "...", "model": "..."}``).
        outputs: output name -> path relative to the folder (``{"final": "final"}``).
        config: the resolved config that was hashed (JSON), so a later run can say what changed.
        details: stage-specific facts worth keeping (counts, resolved hub commits...).
        version: the ja-instruct version that wrote it.
        created: UTC time it was written.
    """

    stage: str
    fingerprint: str
    config_hash: str
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    version: str = ""
    created: str = ""


def config_hash(config: Any) -> str:
    """Hash of a resolved config (a pydantic model or a JSON-able dict)."""
    return stable_hash(_as_json(config))


def _as_json(config: Any) -> Any:
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    return json.loads(json.dumps(config, default=str, sort_keys=True))


def output_fingerprint(stage: str, chash: str, inputs: dict[str, str]) -> str:
    """The fingerprint of a stage output made with config hash ``chash`` from ``inputs``."""
    return stable_hash({"stage": stage, "config": chash, "inputs": dict(sorted(inputs.items()))})


def make_manifest(stage: str, config: Any, inputs: dict[str, str] | None = None,
                  outputs: dict[str, str] | None = None, details: dict | None = None) -> Manifest:
    """A manifest for ``stage`` made with ``config`` (hashed as given) from ``inputs``."""
    cfg = _as_json(config)
    chash = stable_hash(cfg)
    inputs = dict(inputs or {})
    return Manifest(stage=stage, fingerprint=output_fingerprint(stage, chash, inputs), config_hash=chash,
                    inputs=inputs, outputs=dict(outputs or {}), config=cfg, details=dict(details or {}),
                    version=_version(), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def write_manifest(out_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``<out_dir>/manifest.json`` atomically. Call it LAST: its presence means complete."""
    path = Path(out_dir) / MANIFEST
    write_json(path, asdict(manifest))
    return path


def read_manifest(out_dir: str | Path, stage: str | None = None) -> Manifest | None:
    """The manifest in ``out_dir``, or None when there is none (or it is unreadable, or it belongs
    to another stage): a missing manifest means "not complete", never an error."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        raw = read_json(path)
        m = Manifest(**{k: raw[k] for k in Manifest.__dataclass_fields__ if k in raw})
    except Exception:  # a damaged manifest only costs redoing the stage
        return None
    if stage is not None and m.stage != stage:
        return None
    return m


def remove_manifest(out_dir: str | Path) -> None:
    """Mark ``out_dir`` incomplete before changing it (a killed run then never looks complete)."""
    try:
        os.unlink(Path(out_dir) / MANIFEST)
    except FileNotFoundError:
        pass


def describe_changes(old: dict | None, new: dict | None, limit: int = 6) -> str:
    """What differs between two JSON configs, for "redone because ..." messages:
    ``"lr 0.001 -> 0.002, max_steps 4 -> 8"`` (nested keys dotted; at most ``limit`` shown)."""
    changes: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        elif a != b:
            changes.append(f"{key or 'value'} {_short(a)} -> {_short(b)}")

    walk(old or {}, new or {}, "")
    if not changes:
        return "no setting changed"
    more = f" (+{len(changes) - limit} more)" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more


def _short(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= 40 else s[:37] + "..."


def input_changes(old: Manifest | None, inputs: dict[str, str], config: Any) -> list[str]:
    """Why an output made under ``old`` is not the one ``config`` + ``inputs`` would make now:
    e.g. ``["config changed: lr 0.001 -> 0.002", "input 'data' changed"]``; [] when it is."""
    if old is None:
        return ["no complete output yet"]
    reasons = []
    cfg = _as_json(config)
    if stable_hash(cfg) != old.config_hash:
        reasons.append(f"config changed: {describe_changes(old.config, cfg)}")
    for name in sorted(set(old.inputs) | set(inputs)):
        if old.inputs.get(name) != inputs.get(name):
            what = "new" if name not in old.inputs else "removed" if name not in inputs else "changed"
            reasons.append(f"input '{name}' {what}")
    return reasons


# --------------------------------------------------------------------------- layout

class RunLayout:
    """Every output folder of one recipe run, computed once.

    ``layout.stage_dir("train")`` is ``<root>/train`` unless a run registered another folder
    for that stage (``ja-instruct train RECIPE --out X`` registers X); the registry is
    ``<root>/layout.json``. Relative paths in it are kept as the user gave them (relative to
    the working directory, like every other path of a recipe).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._registered: dict[str, str] = {}
        path = self.root / LAYOUT
        if path.is_file():
            try:
                raw = read_json(path)
                if isinstance(raw, dict):
                    self._registered = {k: str(v) for k, v in raw.items() if k in STAGE_FOLDERS}
            except Exception:  # a damaged layout file: fall back to the defaults
                self._registered = {}

    @classmethod
    def of(cls, recipe) -> "RunLayout":
        """The layout of a `ja_instruct.recipe.Recipe` (its ``root``)."""
        return cls(recipe.root)

    def default_dir(self, stage: str) -> Path:
        """``<root>/<folder>`` of a stage, ignoring registrations."""
        return self.root / STAGE_FOLDERS[stage]

    def stage_dir(self, stage: str, out: str | Path | None = None) -> Path:
        """The output folder of ``stage``: ``out`` when given, else the registered one, else the default."""
        if stage not in STAGE_FOLDERS:
            raise KeyError(stage)
        if out is not None:
            return Path(out)
        if stage in self._registered:
            return Path(self._registered[stage])
        return self.default_dir(stage)

    def register(self, stage: str, out: str | Path) -> None:
        """Record that ``stage`` wrote its output to ``out`` (a no-op for the default folder)."""
        out = Path(out)
        current = self._registered.get(stage)
        if out == self.default_dir(stage) and current is None:
            return
        if current == str(out):
            return
        if out == self.default_dir(stage):
            self._registered.pop(stage, None)
        else:
            self._registered[stage] = str(out)
        write_json(self.root / LAYOUT, dict(sorted(self._registered.items())))

    def manifest(self, stage: str) -> Manifest | None:
        """The manifest of ``stage``'s output folder, or None when it is not complete."""
        return read_manifest(self.stage_dir(stage), stage)

    @property
    def data(self) -> Path:
        return self.stage_dir("data")

    @property
    def train(self) -> Path:
        return self.stage_dir("train")

    @property
    def final(self) -> Path:
        """The exported HF model of the train stage (``<train>/final``)."""
        return self.stage_dir("train") / "final"

    @property
    def answers(self) -> Path:
        return self.stage_dir("generate")

    @property
    def judge(self) -> Path:
        return self.stage_dir("judge")

    @property
    def report(self) -> Path:
        return self.stage_dir("report")


# --------------------------------------------------------------------------- fingerprints of inputs

# Small files whose CONTENT defines a model for our purposes (architecture, tokenizer, chat
# template, generation defaults). Weight files are identified by name, size and mtime: hashing
# 26 GB of a 13B checkpoint on every run would cost more than the work it decides about.
_MODEL_CONTENT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                        "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
                        "tokenizer.model", "vocab.json", "merges.txt", "adapter_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def file_fingerprint(path: str | Path) -> str:
    """Content hash of one (small) file, or of every file under a folder (names + contents)."""
    import hashlib

    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def model_dir_fingerprint(path: str | Path) -> str:
    """Fingerprint of a local HF model folder: the contents of its config/tokenizer/template files
    plus the name, size and modification time of each weight file. Retraining (new weights),
    a changed chat template or a changed tokenizer all change it."""
    p = Path(path)
    content = {}
    for name in _MODEL_CONTENT_FILES:
        f = p / name
        if f.is_file():
            content[name] = file_fingerprint(f)
    weights = []
    for f in sorted(p.iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            st = f.stat()
            weights.append([f.name, st.st_size, st.st_mtime_ns])
    return stable_hash({"content": content, "weights": weights})
