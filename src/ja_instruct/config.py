"""The typed-config machinery every stage uses.

Each stage has one pydantic config class (``ja_instruct.<stage>.config``); the
`ja_instruct.recipe.Recipe` holds one optional section per stage. This module
knows how to:

* load a recipe YAML strictly: an unknown key is an error naming the key, the
  file, its line and the closest valid key;
* apply ``--set section.key=value`` overrides (values parsed as YAML);
* describe every key with its docstring, for ``--help`` and the README's recipe
  reference (``python -m ja_instruct.config`` prints it);
* save the resolved config beside an output.

Paths starting with ``embedded:`` name files shipped inside the package
(``embedded:instructions_ja.jsonl``), see `resolve_path`.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ja_instruct.errors import UserError

ASSETS_DIR = Path(__file__).parent / "assets"
EMBEDDED_PREFIX = "embedded:"

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors, attribute docstrings are the docs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


def resolve_path(path: str | Path) -> Path:
    """Resolve ``embedded:NAME`` to the package's assets folder; other paths unchanged."""
    s = str(path)
    if s.startswith(EMBEDDED_PREFIX):
        return ASSETS_DIR / s[len(EMBEDDED_PREFIX):]
    return Path(s).expanduser()


# --------------------------------------------------------------------------- loading

def _yaml_lines(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each key path in a composed YAML tree to its 1-based line number."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = path + (k.value,)
            out[key] = k.start_mark.line + 1
            _yaml_lines(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = v.start_mark.line + 1
            _yaml_lines(v, path + (i,), out)
    return out


def format_loc(loc: tuple) -> str:
    """``('data', 'sources', 0, 'format')`` -> ``data.sources[0].format``."""
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the last key of ``loc`` (for suggestions)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return None
        cur = _inner_model(cur.model_fields[part].annotation)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _inner_model(tp: Any) -> Any:
    """The BaseModel class inside Optional[...] / list[...] / dict[str, ...], if any."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        inner = _inner_model(arg)
        if inner is not None:
            return inner
    return None


def validation_to_user_error(err: ValidationError, model: type[BaseModel], file: str | Path | None,
                             lines: dict[tuple, int] | None = None) -> UserError:
    """Turn the first pydantic error into one clear `UserError` (file, line, key, fix)."""
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and (p.startswith("function-") or "[" in p)))
    line = None
    if lines:
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
    field = format_loc(loc) or None
    if e["type"] == "extra_forbidden":
        owner = _model_at(model, loc)
        valid = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"Did you mean '{close[0]}'?" if close else (f"Valid keys: {', '.join(valid)}." if valid else None)
        return UserError(f"unknown key '{loc[-1]}'", file=file, line=line, field=field, hint=hint)
    if e["type"] == "missing":
        return UserError("required key is missing", file=file, line=line, field=field,
                         hint="Add it (see `ja-instruct <stage> --help` for every key).")
    msg = e["msg"]
    if "input" in e and not isinstance(e["input"], (dict, list)):
        msg += f" (got {e['input']!r})"
    return UserError(msg, file=file, line=line, field=field, hint="Fix the value in the recipe or --set.")


def parse_override(item: str) -> tuple[list[str | int], Any]:
    """``data.sources.0.weight=2`` -> (['data', 'sources', 0, 'weight'], 2)."""
    if "=" not in item:
        raise UserError(f"--set expects section.key=value, got '{item}'", hint="Example: --set train.lr=2e-5")
    key, value = item.split("=", 1)
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides onto the raw recipe mapping (in place; returned)."""
    for item in overrides:
        parts, value = parse_override(item)
        cur: Any = raw
        for i, p in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(cur, list):
                if not isinstance(p, int) or p >= len(cur):
                    raise UserError(f"--set {item}: index {p} out of range", field=format_loc(tuple(parts[:i + 1])))
                cur = cur[p]
                continue
            if cur.get(p) is None:
                cur[p] = [] if isinstance(nxt, int) else {}
            cur = cur[p]
        last = parts[-1]
        if isinstance(cur, list):
            if not isinstance(last, int) or last >= len(cur):
                raise UserError(f"--set {item}: index {last} out of range", field=format_loc(tuple(parts)))
        cur[last] = value
    return raw


def load_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    """Read a YAML mapping and the line of every key; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError("recipe not found", file=path, hint="Check the path (recipes live in recipes/).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError("recipe is not valid UTF-8", file=path, hint="Re-save it as UTF-8.") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UserError(f"invalid YAML: {getattr(e, 'problem', e)}", file=path,
                        line=mark.line + 1 if mark else None, hint="Fix the YAML syntax.") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("a recipe must be a YAML mapping of sections", file=path, line=1)
    return raw, (_yaml_lines(node) if node is not None else {})


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None,
                raw: dict | None = None) -> M:
    """Load and validate ``model`` from a YAML file (or ``raw``) plus ``--set`` overrides."""
    lines: dict[tuple, int] = {}
    if raw is None:
        raw, lines = load_yaml(path) if path is not None else ({}, {})
    raw = apply_overrides(raw, overrides or [])
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise validation_to_user_error(err, model, path, lines) from None


def save_config(cfg: BaseModel, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config beside an output (atomically). Secrets never live in configs:
    API keys are read from environment variables whose *names* the config holds."""
    from ja_instruct.io import write_text

    path = Path(out_dir) / name
    data = cfg.model_dump(mode="json")
    write_text(path, yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


# --------------------------------------------------------------------------- docs

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every key of ``model`` (recursing into nested configs) as (key, type, default, doc)."""
    rows = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        if f.is_required():
            default = "required"
        elif f.default_factory is not None:
            try:
                default = repr(f.default_factory())  # type: ignore[call-arg]
            except TypeError:
                default = "(computed)"
        else:
            default = repr(f.default)
        if isinstance(f.default, BaseModel) or (f.default_factory is not None and "BaseModel" in default):
            default = "(section)"
        inner = _inner_model(f.annotation)
        doc = " ".join((f.description or "").split())
        rows.append((key, _type_name(f.annotation), default, doc))
        if inner is not None:
            is_list = typing.get_origin(f.annotation) is list or any(
                typing.get_origin(a) is list for a in typing.get_args(f.annotation))
            rows.extend(describe_fields(inner, f"{key}[].") if is_list else describe_fields(inner, f"{key}."))
    return rows


def help_epilog(model: type[BaseModel], section: str) -> str:
    """Text for ``--help``: every key of a recipe section with its docstring."""
    out = [f"recipe keys of section '{section}' (set in the YAML or with --set {section}.KEY=VALUE):"]
    for key, tp, default, doc in describe_fields(model, f"{section}."):
        out.append(f"  {key}  [{tp}; default {default}]")
        if doc:
            out.append(f"      {doc}")
    return "\n".join(out)


def reference_markdown() -> str:
    """The README's recipe reference, generated from the configs' docstrings."""
    from ja_instruct.recipe import Recipe

    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, doc in describe_fields(Recipe):
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        out.append(f"| `{key}` | {cell(tp)} | {cell(default)} | {cell(doc)} |")
    return "\n".join(out) + "\n"


REF_START, REF_END = "<!-- recipe-reference:start -->", "<!-- recipe-reference:end -->"


def update_readme(path: str | Path) -> None:
    """Rewrite the recipe reference between the README's markers (``make docs``)."""
    from ja_instruct.io import write_text

    text = Path(path).read_text(encoding="utf-8")
    head, rest = text.split(REF_START, 1)
    _, tail = rest.split(REF_END, 1)
    write_text(path, f"{head}{REF_START}\n{reference_markdown()}{REF_END}{tail}")


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        update_readme(sys.argv[2])
    else:
        print(reference_markdown(), end="")
