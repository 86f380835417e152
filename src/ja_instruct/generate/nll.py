"""Reference NLL: how likely each model finds reference answers (a judge-free signal); by default
the held-out split of the data the recipe trains on, which no tuned model has seen.

With ``generate.reference_nll`` set, the generate stage writes ``<out>/reference_nll.json``::

    {"version": 1,
     "references": {"source": str, "heldout": bool, "fingerprint": str, "conversations": int},
     "definition": str,   # `definition`: names the references, "held-out" only for a held-out split
     "models": {model_id: {"fingerprint", "mean_nll", "perplexity", "tokens", "conversations",
                           "skipped", "per_conversation": [{"id", "nll", "tokens"}]}
                      or {"fingerprint", "unavailable": reason}}}

``heldout`` is true when the references are the held-out split of a data build (``references:
heldout``, or a data build folder): then the number is the model's held-out "eval loss". For a
user-given reference file it is false, and nothing says the answers were never trained on.

Each reference conversation is rendered with the model's own template (``spec.template``;
``spec.system_prompt`` as a system message when the conversation has none) and tokenised exactly
as training tokenises it (`ja_instruct.data.tokenize.encode_conversation`), and only its trained
tokens are scored: every assistant answer and the EOS after it. The mean is token-weighted (sum of
NLL / tokens), as a training loss is; ``nll`` per conversation is a sum, so any subset can be
re-averaged.

An entry is a function of the model's fingerprint, its template, system prompt and dtype, the
references' content and `NLL_VERSION`; a re-run recomputes exactly the entries whose inputs
changed and keeps the others without loading anything. openai models expose no weights and fake
models have none: they are recorded as unavailable, with the reason.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ja_instruct.config import resolve_path
from ja_instruct.data.templates import get_template, validate_messages
from ja_instruct.data.tokenize import IGNORE_INDEX, encode_conversation
from ja_instruct.errors import UserError
from ja_instruct.generate.backends import HFBackend
from ja_instruct.generate.config import HELDOUT, ModelSpec, ReferenceNLLConfig
from ja_instruct.generate.identity import is_hub_model, model_identity
from ja_instruct.generate.questions import Question, load_questions, read_question_records
from ja_instruct.io import read_json, stable_hash, write_json
from ja_instruct.manifest import Manifest, describe_changes

log = logging.getLogger(__name__)

NLL_FILE = "reference_nll.json"
FILE_VERSION = 1
# Bump when the scoring itself changes (masking, tokenisation rule...): every entry is recomputed.
NLL_VERSION = 1
# What every number of the file means; `definition` names the references in it.
_DEFINITION = ("mean negative log-likelihood per token of the reference answers of {source} (assistant tokens "
               "and the EOS after each, the model's own chat template); lower is better")
FIELD = "generate.reference_nll.references"
# Spec fields an entry depends on besides the model itself.
SCORING_KEYS = ("template", "system_prompt", "dtype")
UNAVAILABLE = {
    "openai": "openai backend: an endpoint exposes no weights to score given text with",
    "fake": "fake backend: canned answers, no model",
}


# --------------------------------------------------------------------------- references

@dataclass
class References:
    """The reference conversations: ``ids[i]`` names ``conversations[i]`` (messages ending in answers).
    ``heldout``: they are the held-out split of a data build (never trained on by a model tuned on it)."""

    source: str
    ids: list[str]
    conversations: list[list[dict]]
    skipped: int = 0  # questions lacking a reference answer for some turn
    heldout: bool = False

    @property
    def fingerprint(self) -> str:
        """Hash of the ids and messages, in order."""
        return stable_hash([[i, c] for i, c in zip(self.ids, self.conversations)])


def definition(refs: References) -> str:
    """The file's ``definition``: what the numbers are, naming the references. Only a held-out
    split is called held-out; a user's reference file may have been trained on, for all we know."""
    return _DEFINITION.format(source=f"the {refs.source}" if refs.heldout else refs.source)


def _data_build(path: Path) -> Path | None:
    """The data build folder ``path`` names (the folder itself, or its held-out subfolder), else None."""
    if (path / "dataset" / "state.json").is_file():
        return path
    if path.name == HELDOUT and (path.parent / "dataset" / "state.json").is_file():
        return path.parent
    return None


def _heldout_rows(data_dir: Path, missing: UserError) -> tuple[Path, Iterable[tuple[str, int | None, dict]]]:
    """(the build folder, the rows of its held-out split) of the data build ``data_dir`` (or of
    its ``dataset/`` subfolder, as ``train.dataset_dir`` may name it); ``missing`` is raised when
    there is none (no build there, or a build without a split)."""
    from ja_instruct.data import load_heldout

    if data_dir.name == "dataset" and (data_dir / "state.json").is_file():
        data_dir = data_dir.parent
    try:
        ds = load_heldout(data_dir)
    except UserError:  # no data build at all
        ds = None
    if ds is None:
        raise missing
    file = str(data_dir / HELDOUT)
    return data_dir, ((file, i, rec) for i, rec in enumerate(ds, 1))


def _conversation(rec: dict, file: str, line: int | None) -> tuple[str | None, list[dict]]:
    """(id, validated messages) of a conversation record; bad records name file, line and field."""
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
        raise UserError("'messages' must be a list of {role, content} objects", file=file, line=line, field=FIELD,
                        hint="Use our conversation format, or a FastChat question file with references.")
    try:
        msgs = validate_messages(msgs)
    except UserError as e:
        raise UserError(f"bad reference conversation: {e.message}", file=file, line=line, field=FIELD,
                        hint=e.hint) from None
    if not any(m["role"] == "assistant" for m in msgs):
        raise UserError("reference conversation has no assistant message (nothing to score)", file=file, line=line,
                        field=FIELD)
    cid = rec.get("id", rec.get("question_id"))
    return (None if cid is None else str(cid)), msgs


def _question_conversation(q: Question) -> list[dict] | None:
    """The question's turns with its reference answers, or None when a turn has no reference."""
    ref = q.reference or []
    if len(ref) < len(q.turns) or not all(r.strip() for r in ref[:len(q.turns)]):
        return None
    msgs: list[dict] = []
    for turn, answer in zip(q.turns, ref):
        msgs += [{"role": "user", "content": turn}, {"role": "assistant", "content": answer}]
    return msgs


def _refield(e: UserError) -> UserError:
    """A question-loading error, named as the reference_nll key it comes from."""
    if e.field == "generate.reference_answers":
        e.field = "generate.reference_nll.reference_answers"
    elif e.field in (None, "generate.questions"):
        e.field = FIELD
    return e


def _from_rows(rows: Iterable[tuple[str, int | None, dict]]) -> tuple[list[str | None], list[list[dict]]]:
    ids, convs = [], []
    for file, line, rec in rows:
        cid, msgs = _conversation(rec, file, line)
        ids.append(cid)
        convs.append(msgs)
    return ids, convs


def unique_ids(ids: Sequence[str | None]) -> list[str]:
    """Names for per-conversation results, unique and stable: a given id is kept the first time it
    appears; a repeat gets ``#2``, ``#3``... (the first suffix that no other id uses, given ones
    included: ``["a", "a", "a#2"]`` -> ``["a", "a#3", "a#2"]``); a missing id is its 1-based position."""
    given = {cid for cid in ids if cid is not None}
    used: set[str] = set()
    out = []
    for n, cid in enumerate(ids, 1):
        name = cid if cid is not None else str(n)
        # a position never takes a name the file gives to another conversation
        if name in used or (cid is None and name in given):
            k = 2
            while f"{name}#{k}" in used or f"{name}#{k}" in given:
                k += 1
            name = f"{name}#{k}"
        used.add(name)
        out.append(name)
    return out


def load_references(cfg: ReferenceNLLConfig, recipe) -> References:
    """The reference conversations of ``cfg`` (see `ReferenceNLLConfig.references`), first ``cfg.limit``.

    ``heldout`` reads the held-out split of the dataset the recipe trains on
    (`ja_instruct.train.identity.recipe_dataset_dir`: ``train.dataset_dir`` when set, else the
    data stage's folder); a data build folder given as the references means its held-out split
    too (its ``dataset/`` is the training split).

    Raises:
        UserError: no held-out split, a missing file, a bad record (file, line, field), an empty set.
    """
    heldout = False
    if cfg.references == HELDOUT:
        from ja_instruct.train.identity import recipe_dataset_dir

        data_dir = Path(recipe_dataset_dir(recipe))
        data_dir, rows = _heldout_rows(data_dir, UserError(
            f"the dataset this recipe trains on ({data_dir}) has no held-out split to score models on", field=FIELD,
            hint="Set data.heldout.fraction (e.g. 0.02) and run `ja-instruct data build RECIPE` (or rebuild the "
                 "folder train.dataset_dir names with it), or point references at a conversation or question file."))
        ids, convs = _from_rows(rows)
        skipped, source, heldout = 0, f"held-out split of {data_dir}", True
    else:
        path = resolve_path(cfg.references)
        if not path.exists():
            raise UserError("reference set not found", file=path, field=FIELD,
                            hint="Check the path (relative to the current folder), or use `heldout`.")
        build = _data_build(path) if path.is_dir() else None
        if build is not None:  # a data build: its held-out split, never its training split
            build, rows = _heldout_rows(build, UserError(
                "this data build has no held-out split (its dataset/ is the training split, not references)",
                file=path, field=FIELD,
                hint="Rebuild it with data.heldout.fraction set (e.g. 0.02), or point references at a "
                     "conversation or question file."))
            ids, convs = _from_rows(rows)
            skipped, source, heldout = 0, f"held-out split of {build}", True
        else:
            if path.name == "dataset" and _data_build(path.parent) is not None:
                log.warning("reference_nll: %s is the TRAINING split of a data build; its held-out split is "
                            "references: %s", path, path.parent)
            ids, convs, skipped = _from_file(cfg, path)
            source = str(cfg.references)
    unique = unique_ids(ids)
    if cfg.limit is not None:
        unique, convs = unique[:cfg.limit], convs[:cfg.limit]
    if not convs:
        raise UserError(f"no usable reference conversation in {source}" +
                        (f" ({skipped} question(s) lack a reference answer for some turn)" if skipped else ""),
                        field=FIELD, hint="Give reference answers (generate.reference_nll.reference_answers).")
    if skipped:
        log.info("reference_nll: %d question(s) skipped: no reference answer for every turn", skipped)
    return References(source=source, ids=unique, conversations=convs, skipped=skipped, heldout=heldout)


def _from_file(cfg: ReferenceNLLConfig, path: Path) -> tuple[list[str | None], list[list[dict]], int]:
    """(ids, conversations, questions skipped) of a conversation file or folder, or of a FastChat
    question file whose reference answers complete the conversations."""
    try:
        rows = iter(read_question_records(str(path)))
        first = next(rows, None)
        if first is None:
            raise UserError("reference set is empty", file=path, field=FIELD)
        if "messages" in first[2]:
            ids, convs = _from_rows([first, *rows])
            return ids, convs, 0
        # FastChat questions whose references are the answers
        questions = load_questions(str(path), references=cfg.reference_answers)
        pairs = [(q.key, _question_conversation(q)) for q in questions]
        return [k for k, c in pairs if c], [c for _, c in pairs if c], len(pairs) - sum(1 for _, c in pairs if c)
    except UserError as e:
        raise _refield(e) from None


# --------------------------------------------------------------------------- scoring

_SKIPPED = {"dropped_special_tokens": "special-token string in a message", "dropped_no_response": "no answer"}


def max_positions(model: Any) -> int | None:
    """The longest sequence the model's position embeddings cover (None when the config says nothing)."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def conversation_nll(model: Any, tokenizer: Any, template: Any, conversations: Sequence[Sequence[dict]],
                     batch_size: int = 4, device: Any = None) -> list[tuple[float, int] | None]:
    """Negative log-likelihood of each conversation's trained tokens (answers + EOS) under ``model``.

    Args:
        model: a transformers causal LM (put in eval mode here).
        tokenizer: its tokenizer.
        template: a `Template` or its name (``"tokenizer"`` needs the tokenizer's chat template).
        conversations: message lists, each with at least one assistant message.
        batch_size: conversations per forward pass (sorted by length, right padded, attention
            masked); the result does not depend on it beyond float rounding.
        device: where the inputs go (default: the model's first parameter's device).

    Returns:
        Per conversation ``(sum of token NLL in nats, number of scored tokens)``, or None when it
        is skipped: longer than the model's positions, or not tokenisable for training (a
        special-token string in a message). Cross-entropy is taken in float32.
    """
    import torch
    import torch.nn.functional as F

    template = get_template(template, tokenizer)
    limit = max_positions(model)
    encoded: list[dict | None] = []
    skipped: Counter = Counter()
    for messages in conversations:
        enc, status = encode_conversation(tokenizer, template, messages, max_length=None)
        if enc is not None and limit is not None and len(enc["input_ids"]) > limit:
            enc, status = None, f"longer than the model's {limit} positions"
        encoded.append(enc)
        if enc is None:
            skipped[_SKIPPED.get(status, status)] += 1
    if skipped:
        log.info("reference NLL: %d conversation(s) skipped (%s)", sum(skipped.values()),
                 ", ".join(f"{why}: {n}" for why, n in skipped.items()))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked: any id will do
    order = sorted((i for i, e in enumerate(encoded) if e is not None), key=lambda i: -len(encoded[i]["input_ids"]))
    out: list[tuple[float, int] | None] = [None] * len(encoded)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        # Right padding: real tokens keep positions 0..n-1 and never attend to a pad (causal).
        ids = torch.full((len(idx), len(encoded[idx[0]]["input_ids"])), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            n = len(encoded[i]["input_ids"])
            ids[row, :n] = torch.tensor(encoded[i]["input_ids"])
            mask[row, :n] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for row, i in enumerate(idx):
                labels = torch.tensor(encoded[i]["labels"][1:], device=logits.device)  # logits[t] predicts t+1
                pos = (labels != IGNORE_INDEX).nonzero(as_tuple=True)[0]
                # float32 for this row's scored positions only, never a B x L x V copy of the batch
                nll = F.cross_entropy(logits[row, pos].float(), labels[pos], reduction="sum")
                out[i] = (float(nll), int(pos.numel()))
        del logits
    return out


def summarize_nll(ids: Sequence[str], results: Sequence[tuple[float, int] | None]) -> dict:
    """The token-weighted summary of `conversation_nll` results (an entry of the file, less its
    fingerprint): ``mean_nll`` = sum of NLL / sum of tokens, not a mean of per-conversation means."""
    per = [{"id": cid, "nll": r[0], "tokens": r[1]} for cid, r in zip(ids, results) if r is not None]
    tokens = sum(p["tokens"] for p in per)
    if not tokens:
        return {"unavailable": f"all {len(results)} reference conversation(s) were skipped"}
    mean = sum(p["nll"] for p in per) / tokens
    return {"mean_nll": mean, "perplexity": math.exp(mean), "tokens": tokens, "conversations": len(per),
            "skipped": len(results) - len(per), "per_conversation": per}


def with_system_prompt(spec: ModelSpec, messages: list[dict]) -> list[dict]:
    """``messages`` as ``spec`` is asked: its system prompt first, unless the conversation has its
    own system message (the reference answer was written for that one)."""
    if spec.system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": spec.system_prompt}, *messages]
    return list(messages)


# --------------------------------------------------------------------------- the file

def entry_fingerprint(spec: ModelSpec, model_fp: str, references_fp: str) -> str:
    """What a model's entry is a function of."""
    return stable_hash({"model": model_fp, **{k: getattr(spec, k) for k in SCORING_KEYS},
                        "references": references_fp, "nll_version": NLL_VERSION})


def _read_file(path: Path) -> dict:
    try:
        raw = read_json(path) if path.is_file() else {}
    except UserError:  # a damaged file only costs recomputing it
        raw = {}
    return raw if isinstance(raw, dict) and raw.get("version") == FILE_VERSION else {}


class ReferenceNLL:
    """The reference-NLL file of one generate run: which entries are current, scoring, writing.

    ``old`` is the stage manifest found before the run (it says what changed since).
    """

    def __init__(self, cfg: ReferenceNLLConfig, refs: References, out: Path, old: Manifest | None = None) -> None:
        self.cfg, self.refs, self.path, self.old_manifest = cfg, refs, Path(out) / NLL_FILE, old
        self.refs_fp = refs.fingerprint
        raw = _read_file(self.path)
        self.old_refs_fp = (raw.get("references") or {}).get("fingerprint")
        self.old_header = {k: raw.get(k) for k in ("references", "definition")}
        models = raw.get("models") if isinstance(raw.get("models"), dict) else {}
        self.old_entries = {k: v for k, v in models.items() if isinstance(v, dict)}
        self.entries = dict(self.old_entries)

    def is_current(self, spec: ModelSpec, model_fp: str) -> bool:
        """Whether ``spec``'s entry is what this run would compute."""
        entry = self.entries.get(spec.id)
        return entry is not None and entry.get("fingerprint") == entry_fingerprint(spec, model_fp, self.refs_fp)

    def header(self) -> dict:
        """The file's ``references`` block and ``definition`` as this run writes them."""
        return {"references": {"source": self.refs.source, "heldout": self.refs.heldout,
                               "fingerprint": self.refs_fp, "conversations": len(self.refs.ids)},
                "definition": definition(self.refs)}

    def all_current(self, specs: Iterable[ModelSpec], identity: dict[str, tuple[str | None, str]]) -> bool:
        """Whether the file is what this run would write: every model of ``specs`` has a current entry
        (``identity``: id -> (path, fingerprint)) and the header names the references as this run
        does (a file whose label alone is stale is rewritten, without scoring anything again)."""
        return (self.old_header == self.header()
                and all(s.id in identity and self.is_current(s, identity[s.id][1]) for s in specs))

    def reasons(self, spec: ModelSpec, model_fp: str) -> list[str]:
        """Why ``spec``'s old entry is stale ([] when there was none)."""
        if spec.id not in self.old_entries:
            return []
        why = ["references changed"] if self.old_refs_fp != self.refs_fp else []
        m = self.old_manifest
        if m is not None:
            before = m.inputs.get(f"model:{spec.id}")
            if before is not None and before != model_fp:
                why.append("model changed")
            old_spec = next((x for x in m.config.get("models", []) if isinstance(x, dict) and x.get("id") == spec.id),
                            None)
            if old_spec is not None:
                prev, now = {k: old_spec.get(k) for k in SCORING_KEYS}, {k: getattr(spec, k) for k in SCORING_KEYS}
                if prev != now:
                    why.append(f"settings changed ({describe_changes(prev, now)})")
        return why or ["model, template, system prompt, dtype or NLL definition changed"]

    def on_loaded(self, spec: ModelSpec) -> Callable[[Any, str], None]:
        """A hook for `ja_instruct.generate.run.generate_for_model`: score with the model that
        generation has just loaded, instead of loading it a second time."""
        def hook(backend: Any, model_fp: str) -> None:
            if isinstance(backend, HFBackend) and not self.is_current(spec, model_fp):
                self._score(spec, model_fp, backend)
        return hook

    def update(self, spec: ModelSpec, model_path: str | None, model_fp: str, recipe=None) -> str:
        """Make ``spec``'s entry current: keep it, mark it unavailable, or load the model (with
        the loader generation uses) and score it. Returns the model fingerprint (a hub model's
        may change while loading)."""
        if self.is_current(spec, model_fp):
            entry = self.entries[spec.id]
            if spec.id in self.old_entries and entry is self.old_entries[spec.id]:
                self._log(spec, entry, kept=True)
            return model_fp
        if spec.backend in UNAVAILABLE:
            self.entries[spec.id] = {"fingerprint": entry_fingerprint(spec, model_fp, self.refs_fp),
                                     "unavailable": UNAVAILABLE[spec.backend]}
            log.info("%s: reference NLL unavailable (%s)", spec.id, UNAVAILABLE[spec.backend])
            return model_fp
        backend = HFBackend(spec, model_path)  # vllm models too: scored with transformers
        try:
            if recipe is not None and is_hub_model(spec, model_path):
                model_fp = model_identity(spec, recipe)[1]  # loading may have downloaded another snapshot
            self._score(spec, model_fp, backend)
        finally:
            backend.close()
        return model_fp

    def _score(self, spec: ModelSpec, model_fp: str, backend: HFBackend) -> None:
        why = self.reasons(spec, model_fp)
        log.info("%s: reference NLL %s", spec.id, f"recomputed: {'; '.join(why)}" if why else
                 f"computing over {len(self.refs.ids)} conversations")
        convs = [with_system_prompt(spec, c) for c in self.refs.conversations]
        results = conversation_nll(backend.model, backend.tokenizer, backend.template, convs,
                                   batch_size=self.cfg.batch_size, device=backend.device)
        entry = {"fingerprint": entry_fingerprint(spec, model_fp, self.refs_fp),
                 **summarize_nll(self.refs.ids, results)}
        self.entries[spec.id] = entry
        self._log(spec, entry, kept=False)

    @staticmethod
    def _log(spec: ModelSpec, entry: dict, kept: bool) -> None:
        if "unavailable" in entry:
            log.info("%s: reference NLL unavailable (%s)", spec.id, entry["unavailable"])
            return
        log.info("%s: reference NLL %.2f/token (perplexity %.1f) over %d conversations, %d tokens%s", spec.id,
                 entry["mean_nll"], entry["perplexity"], entry["conversations"], entry["tokens"],
                 " (up to date)" if kept else "")

    def write(self, specs: Iterable[ModelSpec], identity: dict[str, tuple[str | None, str]]) -> Path:
        """Write the file atomically with the current entries of ``specs`` only (a stale entry of a
        model this run did not score is dropped rather than shown beside current ones)."""
        models = {s.id: self.entries[s.id] for s in specs if s.id in identity and self.is_current(s, identity[s.id][1])}
        write_json(self.path, {"version": FILE_VERSION, **self.header(), "models": models})
        return self.path
