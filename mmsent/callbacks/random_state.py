"""The random generators' states, kept in every checkpoint for an exact resume."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class RandomState(pl.Callback):
    """Saves torch's (CPU and CUDA), NumPy's and Python's global generator states with
    each checkpoint and restores them on resume.

    Lightning does not restore them, so a resumed fit would shuffle and drop out otherwise
    than one never stopped. The states are plain data, as ``weights_only`` loading needs.
    """

    def state_dict(self) -> dict[str, Any]:
        """dict[str, Any]: The generators' states now."""
        kind, keys, position, has_gauss, cached = np.random.get_state()
        version, python_state, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": version, "state": list(python_state), "gauss": gauss},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the generators' states saved by :meth:`state_dict`.

        Args:
            state_dict (dict[str, Any]): What the checkpoint holds for this callback.
        """
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        saved = state_dict["numpy"]
        np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["position"],
                             saved["has_gauss"], saved["cached"]))
        saved = state_dict["python"]
        random.setstate((saved["version"], tuple(saved["state"]), saved["gauss"]))
