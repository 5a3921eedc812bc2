"""User-input errors and the range checks that raise them; imports nothing of shallownet's, so every layer
(the kinds' schemas, the config loader, the registry's users) can call it without import cycles."""

from __future__ import annotations

import os
import re
from typing import Any


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the key or file and what is allowed."""


def require(condition: bool, key: str, allowed: str, value: Any) -> None:
    """Raise a ConfigError naming `key` and what it allows unless `condition` holds."""
    if not condition:
        raise ConfigError(f"config key '{key}' must be {allowed}, got {value!r}")


def require_device(device: str, key: str) -> None:
    """`device` is 'cpu', or 'cuda[:N]' with that GPU present on this machine."""
    require(device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device) is not None, key, "cpu or cuda[:N]", device)
    if device == "cpu":
        return
    import torch

    index = device.partition(":")[2]
    present = torch.cuda.is_available() and (index == "" or int(index) < torch.cuda.device_count())
    require(present, key, "cpu or a CUDA device present on this machine", device)


def require_memory(n_bytes: float, what: str, key: str) -> None:
    """Refuse before allocating what cannot fit in this machine's memory."""
    available = physical_memory()
    if n_bytes > available:
        raise ConfigError(f"config key '{key}': {what} needs {n_bytes / 2**30:.3g} GiB, more than this machine's "
                          f"{available / 2**30:.3g} GiB")


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
