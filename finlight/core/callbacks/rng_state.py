"""Saves and restores the random number generators with each checkpoint.

Lightning checkpoints do not hold RNG states, so a run resumed from ``last.ckpt`` draws other dropout masks
than the uninterrupted run and ends elsewhere. With this callback (on by default in the CLI) a resumed run
continues the same random streams. States are stored as plain tensors/lists (loadable with weights_only).
"""

from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import torch


class RNGState(pl.Callback):
    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, cached = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                 "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
                 "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                           "has_gauss": int(has_gauss), "cached": float(cached)}}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
