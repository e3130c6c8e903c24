"""The models the studio offers (`ModelShelf`): the pipeline's checkpoints found here, plus any named.

Each is loaded the first time a tab asks for it and then shared by every tab (inference only: each
session keeps its own model state). The default is the first of `checkpoint_choice.DEFAULT_CHECKPOINTS`
present, the int8 Performance RNN, as for `amadeus generate` and `amadeus live`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from amadeus.checkpoint_choice import DEFAULT_CHECKPOINTS
from amadeus.errors import UserError

if TYPE_CHECKING:
    from amadeus.generation import Loaded

FAMILY_NAMES = {"performance_rnn": "Performance RNN", "perceiver_ar": "Perceiver AR"}


def model_id(path: Path) -> str:
    """"save/performance_rnn.int8.sess" -> "performance_rnn.int8"."""
    return path.name.removesuffix(".sess")


def label(path: Path) -> str:
    """What the page shows: "Performance RNN, int8" (the file name where the family is not known)."""
    name = model_id(path)
    stem, _, precision = name.partition(".")
    return f"{FAMILY_NAMES.get(stem, stem)}, {precision or 'fp32'}"


class ModelShelf:
    def __init__(self, given: Sequence[str | Path] = (), root: str | Path = "."):
        paths = [Path(p) for p in given] or [Path(root) / name for name in DEFAULT_CHECKPOINTS]
        missing = [str(p) for p in given if not Path(p).is_file()]
        if missing:
            raise UserError(f"serve: checkpoint not found: {missing[0]}")
        self.paths = {model_id(p): p for p in paths if p.is_file()}
        if not self.paths:
            raise UserError(f"serve: none of {', '.join(DEFAULT_CHECKPOINTS)} exists here; pass --checkpoint "
                            "FILE.sess (or run `make repro` to train the pipeline's models)")
        self.default = next(iter(self.paths))
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()

    def catalogue(self) -> list[dict[str, str]]:
        return [{"id": key, "label": label(path)} for key, path in self.paths.items()]

    def load(self, key: str) -> Loaded:
        """The model `key` (blocking the first time: run it off the event loop)."""
        from amadeus.generation import load

        if key not in self.paths:
            raise UserError(f"model: {key!r} is not offered; use one of {', '.join(self.paths)}")
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load(self.paths[key])
            return self._loaded[key]
