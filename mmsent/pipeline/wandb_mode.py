"""Whether W&B logs online, offline or not at all, so that nothing ever asks for a login.

Without credentials every run is written offline (``wandb sync`` uploads it later).
``WANDB_MODE``, when set, decides over the pipeline file's ``wandb.mode``.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

from mmsent.errors import ConfigError

log = logging.getLogger(__name__)

# WANDB_MODE values and the mode they mean here; None turns W&B off.
ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
             "disabled": None}
DEFAULT_HOST = "https://api.wandb.ai"


def has_credentials() -> bool:
    """Whether W&B can log in without asking: an API key or token file, or a netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).netloc
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_mode(requested: str = "auto") -> str | None:
    """The mode a run starts in.

    Args:
        requested: ``auto``, ``online`` or ``offline``; ``WANDB_MODE``, when set, overrides it.

    Returns:
        ``"online"`` (only with credentials), ``"offline"``, or None for ``WANDB_MODE=disabled``.

    Raises:
        ConfigError: If ``WANDB_MODE`` holds a value W&B does not know.
    """
    env = _env_mode()
    if env and env not in ENV_MODES:
        raise ConfigError(f"WANDB_MODE={os.environ['WANDB_MODE']!r} is not one of {sorted(ENV_MODES)}; "
                         f"unset it to let the pipeline file's wandb.mode decide")
    mode = ENV_MODES.get(env, requested)
    if mode is None or mode == "offline":
        return mode
    if has_credentials():
        return "online"
    if mode == "online":
        log.warning("W&B mode is online but no credentials were found (WANDB_API_KEY or "
                    "`wandb login`): writing offline runs to upload later with `wandb sync`")
    return "offline"


def default_to_offline() -> None:
    """Makes W&B write offline here when no mode was chosen and there are no credentials."""
    if not _env_mode() and not has_credentials():
        os.environ["WANDB_MODE"] = "offline"


def _env_mode() -> str:
    """``WANDB_MODE`` normalized; a blank one is removed, since W&B rejects it."""
    if "WANDB_MODE" in os.environ and not os.environ["WANDB_MODE"].strip():
        del os.environ["WANDB_MODE"]
    return os.environ.get("WANDB_MODE", "").strip().lower()
