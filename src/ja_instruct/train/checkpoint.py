"""Sharded, atomic, resumable checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout under ``<out>/checkpoints/``: one folder per run (a run = one weights config +
one set of inputs, `ja_instruct.train.identity.run_id`), so a changed config starts a
fresh run next to the old one and never resumes a checkpoint made under another config::

    <run id>/
        run.json            the run's config and inputs (to say what differs from another run)
        step_00000012/      one checkpoint (DCP shards of model + optimiser, one file per rank,
            .metadata       plus rank<r>.pt: scheduler, RNG states and the trainer state)
            rank0.pt
            ...
        latest              name of the newest complete checkpoint, written last
        metrics.jsonl       the run's metrics, parked here while another run owns <out>/metrics.jsonl

Atomicity: every rank writes into ``.tmp-step_...``; after a barrier rank 0 renames the
folder (atomic on one filesystem) and then rewrites ``latest`` (atomically). A run killed
at any moment leaves either the previous checkpoint or the new one, never half of one.
On a multi-node cluster ``<out>`` must be on a filesystem every node sees.

The model and optimiser go through ``get_state_dict`` / ``set_state_dict``, which give
fully-qualified parameter names whether or not the model is FSDP-sharded, so a checkpoint
can be resumed with another number of ranks (DCP reshards on load).
"""

from __future__ import annotations

import random
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ja_instruct.io import read_json, write_json, write_text
from ja_instruct.train.distributed import Dist

LATEST = "latest"
RUN_INFO = "run.json"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def save_checkpoint(ckpt_root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, trainer_state: dict, d: Dist, keep_last: int) -> Path:
    """Save a checkpoint of ``step`` (every rank calls this), then prune to the last ``keep_last``."""
    name = step_dir_name(step)
    final, tmp = ckpt_root / name, ckpt_root / f".tmp-{name}"
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a run killed while saving
        tmp.mkdir(parents=True)
    d.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process without a process group is fine: say nothing
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    # Per-rank extras: RNG differs per rank (dropout); scheduler and trainer state are the same.
    torch.save({"rng": _rng_state(), "scheduler": scheduler.state_dict(), "trainer": trainer_state},
               tmp / f"rank{d.rank}.pt")
    d.barrier()  # every shard is on disk before the folder becomes visible
    if d.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        write_text(ckpt_root / LATEST, name + "\n")
        _prune(ckpt_root, keep_last)
    d.barrier()
    return final


def _prune(ckpt_root: Path, keep_last: int) -> None:
    done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint, or None (``latest`` is written only after the rename)."""
    marker = ckpt_root / LATEST
    if not marker.is_file():
        return None
    path = ckpt_root / marker.read_text().strip()
    return path if (path / ".metadata").is_file() else None


def read_trainer_state(path: Path) -> dict:
    """The trainer state of a checkpoint (rank 0's copy; every rank's is the same)."""
    return torch.load(path / "rank0.pt", weights_only=False)["trainer"]


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, d: Dist) -> dict:
    """Restore model, optimiser, scheduler and this rank's RNG in place; returns the trainer state."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(state, checkpoint_id=str(path))  # in place, resharded to this run's layout
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    extras_path = path / f"rank{d.rank}.pt"
    if not extras_path.is_file():  # resumed with more ranks than saved: reuse rank 0's RNG
        extras_path = path / "rank0.pt"
    extras = torch.load(extras_path, weights_only=False)
    scheduler.load_state_dict(extras["scheduler"])
    _set_rng_state(extras["rng"])
    return extras["trainer"]


def write_run_info(run_dir: Path, run: str, config: dict, inputs: dict[str, str]) -> None:
    """Record what a run is made of (``<run dir>/run.json``), once, when it starts."""
    write_json(run_dir / RUN_INFO, {"run": run, "config": config, "inputs": inputs,
                                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "started_ns": time.time_ns()})


def previous_run(ckpt_root: Path, run: str) -> dict | None:
    """The ``run.json`` of the most recently started OTHER run under ``ckpt_root``, or None."""
    infos = []
    for p in ckpt_root.glob(f"*/{RUN_INFO}"):
        if p.parent.name == run:
            continue
        try:
            infos.append(read_json(p))
        except Exception:  # a damaged run.json only costs the "what changed" line
            continue
    infos = [i for i in infos if isinstance(i, dict)]
    return max(infos, key=lambda i: i.get("started_ns") or 0, default=None)


def prune_other_runs(ckpt_root: Path, keep: str) -> list[str]:
    """Delete everything under ``ckpt_root`` but the run ``keep`` (other configs' checkpoints,
    and step folders of the older flat layout); returns the names removed."""
    removed = []
    for p in sorted(ckpt_root.iterdir()) if ckpt_root.is_dir() else []:
        if p.name == keep:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed
