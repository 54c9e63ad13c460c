"""Fail fast and clearly when a hub id is asked for on a machine that cannot reach the hub."""

from __future__ import annotations

import os
import socket

from s3delta_jax.errors import UserError

HUB_HOST = "huggingface.co"
OFFLINE_HINT = (
    "pass a local directory instead (a Hugging Face checkpoint with config.json, model.safetensors and "
    "its tokenizer files; local data files with --config.data.path), or use a model that installs "
    "offline (configs/mrpc.py:minilm) or the offline smoke config (configs/mrpc.py:smoke)"
)


class HubUnavailableError(UserError, RuntimeError):
    """A hub id was requested but the hub cannot be reached (or offline mode is on)."""


def _is_offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_reachable(timeout_s: float = 2.0) -> bool:
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def resolve_offline(name_or_path: str, what: str) -> None:
    """Returns if `name_or_path` is a local path or the hub is reachable; raises otherwise.

    Raises HubUnavailableError within a few seconds (one connection attempt, no retries) with a
    one-line message naming the local alternatives.
    """
    if os.path.exists(name_or_path):
        return
    if _is_offline_env() or not _hub_reachable():
        raise HubUnavailableError(
            f"{what} {name_or_path!r} is not a local path and the Hugging Face hub is not "
            f"reachable (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {OFFLINE_HINT}."
        )
