"""Which commit of a Hugging Face hub dataset a build reads.

A hub source without a pinned commit reads whatever the repository holds today, so a
build must record the commit it read (``stats.json``, the manifest's inputs): a new
upstream commit then changes the build's fingerprint and triggers a rebuild, and the
recorded sha is what to write as ``revision:`` to reproduce the build later.

The commit is resolved, in order:

* ``revision`` is already a full 40-hex commit sha: used as it is (no lookup);
* online: ``HfApi().dataset_info(repo, revision=...).sha`` (the build then reads that
  exact commit, so what is recorded is what was read even if the repo moves meanwhile);
* offline (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``), or when the hub cannot be
  reached: the local HF cache, ``<HF_HUB_CACHE>/datasets--owner--name/refs/<revision or main>``;
* otherwise it stays unknown (``sha`` None), and the build says so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ja_instruct.config import looks_local
from ja_instruct.data.config import SourceConfig
from ja_instruct.errors import UserError

FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubCommit:
    """The commit a hub source resolves to.

    Attributes:
        repo: the dataset id (``owner/name``).
        revision: the recipe's ``revision`` (None: the default branch).
        sha: the resolved commit, or None when it could not be determined.
        via: how it was resolved: ``pinned``, ``hub``, ``cache`` or ``unresolved``.
    """

    repo: str
    revision: str | None
    sha: str | None
    via: str

    @property
    def fingerprint(self) -> str:
        """The manifest input of the source: the commit, or what was asked when unknown."""
        return self.sha or f"unresolved:{self.repo}@{self.revision or 'main'}"


def is_builder(src: SourceConfig) -> bool:
    """A `datasets` builder over local files (``path: parquet`` + ``data_files``), not a hub repo:
    builder names have no ``/`` and only make sense with ``data_files``."""
    return "/" not in src.path and bool(src.data_files) and not looks_local(src.path)


def is_hub_source(src: SourceConfig) -> bool:
    """Whether ``src`` reads a hub dataset repository."""
    return not looks_local(src.path) and not is_builder(src)


def offline() -> bool:
    """Whether the hub must not be contacted (read at call time, not at import)."""
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return any(v.strip().lower() in _TRUE for v in env) or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The HF hub cache folder, from the environment as it is now (huggingface_hub reads it
    once at import, which is too early for a process that changes it, tests included)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_commit(repo: str, revision: str | None) -> str | None:
    """The commit the local HF cache holds for ``repo`` at ``revision`` (branch or tag;
    default ``main``), or None when the cache does not know it."""
    from huggingface_hub.file_download import repo_folder_name

    ref = hub_cache_dir() / repo_folder_name(repo_id=repo, repo_type="dataset") / "refs" / (revision or "main")
    try:
        sha = ref.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return sha if FULL_SHA.match(sha) else None


def resolve_commit(src: SourceConfig, field: str | None = None) -> HubCommit:
    """The commit ``src`` (a hub source) reads; see the module doc for the order.

    A repository or revision the hub says does not exist is a `UserError` naming ``field``
    (the recipe key of the source); a network failure falls back to the cache."""
    repo, rev = src.path, src.revision
    if rev is not None and FULL_SHA.match(rev):
        return HubCommit(repo, rev, rev, "pinned")
    if not offline():
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            return HubCommit(repo, rev, HfApi().dataset_info(repo, revision=rev, timeout=20).sha, "hub")
        except RevisionNotFoundError:
            raise UserError(f"revision '{rev}' of hub dataset '{repo}' does not exist",
                            field=f"{field}.revision" if field else "revision",
                            hint="Use a branch, tag or commit sha of that repository.") from None
        except RepositoryNotFoundError:
            raise UserError(f"hub dataset '{repo}' not found (or private without a token)",
                            field=f"{field}.path" if field else "path",
                            hint="Check the id; for a private or gated dataset log in (HF_TOKEN).") from None
        except Exception:  # network trouble of any kind: the cache may still know the commit
            pass
    sha = cached_commit(repo, rev)
    return HubCommit(repo, rev, sha, "cache" if sha else "unresolved")


def pin_warning(name: str, commit: HubCommit) -> str | None:
    """The warning for a source whose build is not reproducible as written, or None."""
    if commit.sha is None:
        return (f"warning: source '{name}': cannot tell which commit of hub dataset '{commit.repo}' is read "
                f"(offline and not in the HF cache at {hub_cache_dir()}); a new upstream version would go "
                "unnoticed. Pin it with `revision: <commit sha>` in that source.")
    if commit.revision is None:
        return (f"warning: source '{name}' has no 'revision': read hub dataset '{commit.repo}' at its latest "
                f"commit {commit.sha}. For a reproducible build pin it: add `revision: {commit.sha}` "
                "to that source in the recipe.")
    return None
