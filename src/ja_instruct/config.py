"""The typed-config machinery every stage uses.

Each stage has one pydantic config class (``ja_instruct.<stage>.config``); the
`ja_instruct.recipe.Recipe` holds one optional section per stage. This module
knows how to:

* load a recipe YAML strictly: an unknown key is an error naming the key, the
  file, its line and the closest valid key; a key given twice in one mapping
  (two ``data:`` sections) is an error naming both lines, not a silent overwrite;
* apply ``--set section.key=value`` overrides (values parsed as YAML);
* describe every key with its docstring, for ``--help`` and the recipe reference
  ``docs/recipes.md`` (``make docs``; ``python -m ja_instruct.config`` prints it);
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


# Suffixes of data files: a recipe string ending in one names a local file, never a hub
# repository (hub ids are ``owner/name`` and do not end like files).
FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".txt", ".arrow",
                 ".gz", ".bz2", ".xz", ".zst", ".zip")


def looks_local(path: str, suffixes: tuple[str, ...] = FILE_SUFFIXES) -> bool:
    """Whether a recipe string names a local file or folder rather than a hub id.

    Local: ``embedded:``, ``/``, ``./``, ``../``, ``~``; a name ending in one of
    ``suffixes``; anything that exists; more than one ``/`` (hub ids have one); or
    ``first/rest`` whose ``first`` is an existing local folder. So ``data/mine.jsonl`` or
    ``runs/x/final`` that do not exist are reported as missing files instead of being
    looked up on the hub, while ``owner/name`` stays a hub id.
    """
    s = str(path)
    if s.startswith((EMBEDDED_PREFIX, "/", "./", "../", "~")) or s in (".", ".."):
        return True
    if s.lower().endswith(suffixes) or Path(s).exists():
        return True
    parts = s.replace("\\", "/").split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


# --------------------------------------------------------------------------- loading

class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping (a YAMLError, so every YAML reader reports it)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key '{key}' is given twice (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping: plain PyYAML keeps the
    last one, so a second ``data:`` section would silently replace the first. Merge keys
    (``<<: *base``) may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # unhashable: SafeConstructor reports it below
                pass
        return super().construct_mapping(node, deep=deep)


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
    if "input" in e and not isinstance(e["input"], (dict, list)) and not _is_secret(e, loc):
        msg += f" (got {e['input']!r})"
    return UserError(msg, file=file, line=line, field=field, hint="Fix the value in the recipe or --set.")


_SECRET_WORDS = ("key", "token", "secret", "password")


def _is_secret(error: dict, loc: tuple) -> bool:
    """Whether echoing the input of this pydantic error could print a secret: the validator
    said so (`ja_instruct.secrets.SecretInConfigError`), or a key on its path is named like
    one (``api_key_env``, ``hf_token``...). Such values are never shown back."""
    from ja_instruct.secrets import SecretInConfigError

    if isinstance((error.get("ctx") or {}).get("error"), SecretInConfigError):
        return True
    return any(isinstance(p, str) and any(w in p.lower() for w in _SECRET_WORDS) for p in loc)


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
    """Read a YAML mapping and the line of every key; errors (bad syntax, a key given twice)
    name file and line. A UTF-8 byte-order mark is accepted."""
    path = Path(path)
    if not path.is_file():
        raise UserError("recipe not found", file=path, hint="Check the path (recipes live in recipes/).")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError("recipe is not valid UTF-8", file=path, hint="Re-save it as UTF-8.") from None
    loader = UniqueKeyLoader(text)
    try:  # compose once, then build the data from the same tree: one parse gives values and lines
        node = loader.get_single_node()
        lines = _yaml_lines(node) if node is not None else {}
        raw = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as d:
        where = [k for k, n in lines.items() if n == d.second and k and k[-1] == d.key]
        raise UserError(f"key '{d.key}' is given twice (lines {d.first} and {d.second})", file=path,
                        line=d.second, field=format_loc(where[0]) if where else str(d.key),
                        hint="Keep one of them: YAML would silently use only the last.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UserError(f"invalid YAML: {getattr(e, 'problem', e)}", file=path,
                        line=mark.line + 1 if mark else None, hint="Fix the YAML syntax.") from None
    finally:
        loader.dispose()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("a recipe must be a YAML mapping of sections", file=path, line=1)
    return raw, lines


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
    """The recipe-key table (every key, type, default, meaning), generated from the configs'
    docstrings."""
    from ja_instruct.recipe import Recipe

    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, doc in describe_fields(Recipe):
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        out.append(f"| `{key}` | {cell(tp)} | {cell(default)} | {cell(doc)} |")
    return "\n".join(out) + "\n"


DOCS_PAGE = "docs/recipes.md"


def reference_page() -> str:
    """The whole of ``docs/recipes.md``: a generated-file header, a title and the table."""
    return ("<!-- Generated by `make docs` (python -m ja_instruct.config --write docs/recipes.md) "
            "from the configs' docstrings; do not edit by hand. -->\n"
            "# Recipe reference\n\n"
            "Every key of a recipe. The same text is shown by `ja-instruct <stage> --help`; "
            "set a key in the YAML or with `--set section.key=value`.\n\n" + reference_markdown())


def write_reference(path: str | Path = DOCS_PAGE) -> Path:
    """Write the recipe reference page (``make docs``)."""
    from ja_instruct.io import write_text

    write_text(path, reference_page())
    return Path(path)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        write_reference(sys.argv[2])
    else:
        print(reference_markdown(), end="")
