"""Secrets: API keys come from environment variables, and only their NAMES live in configs.

A recipe says ``api_key_env: OPENAI_API_KEY``; the key itself is read from the environment
at call time and never reaches a config, a log, an output or an error message.
`env_var_name` is the pydantic validator every ``api_key_env`` field uses: a value that is
not a plausible variable name (``sk-...``, anything with characters a shell variable cannot
have, or a long random-looking token) is refused WITHOUT echoing it, so a key pasted into
the wrong field does not end up in ``config.yaml``, the report or the terminal.
"""

from __future__ import annotations

import re

# POSIX shell variable names: letters, digits, underscore, not starting with a digit.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Shapes of real keys: known prefixes, or a long mixed-case/digit token with no underscore
# structure (variable names are words joined by underscores, keys are random).
_KEY_PREFIXES = ("sk-", "sk_", "hf_", "ghp_", "gho_", "xai-", "AIza", "pk-", "rk-")


class SecretInConfigError(ValueError):
    """An ``api_key_env`` value that looks like a key; its message never contains the value."""


def looks_like_secret(value: str) -> bool:
    """Whether ``value`` looks like an API key rather than an environment variable name."""
    if value.startswith(_KEY_PREFIXES):
        return True
    if not _NAME.match(value):
        return True  # keys carry '-', '.', '/', '=' ...; a name never does
    if len(value) >= 24 and "_" not in value and any(c.isdigit() for c in value) \
            and any(c.islower() for c in value) and any(c.isupper() for c in value):
        return True  # a long random mixed-case token
    return False


def env_var_name(value: str | None) -> str | None:
    """Validate an ``api_key_env`` value: the NAME of an environment variable (or None)."""
    if value is None:
        return None
    if looks_like_secret(value):
        raise SecretInConfigError(
            "api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), and this "
            "value looks like an API key itself (not shown). Put the key in the environment "
            "(export OPENAI_API_KEY=...) and write the variable's name here; if the key was committed "
            "anywhere, revoke it.")
    return value
