"""Which checkpoint a command uses when the user names none: the pipeline's, quickest to answer first.

Kept apart from checkpoint.py (which imports torch) so building the command line stays light.
"""

from __future__ import annotations

from pathlib import Path

from amadeus.errors import UserError

# The pipeline's checkpoints (dvc repro writes them), in the order `--checkpoint` falls back to them:
# int8 first, since it answers fastest at batch 1.
DEFAULT_CHECKPOINTS = ("save/performance_rnn.int8.sess", "save/performance_rnn.sess",
                       "save/perceiver_ar.int8.sess", "save/perceiver_ar.sess")

HELP = f"a .sess or .int8.sess file, any model family (default: the pipeline's, the first of " \
       f"{', '.join(DEFAULT_CHECKPOINTS)} that exists)"


def find_checkpoint(given: str | None, command: str, root: str | Path = ".") -> tuple[Path, bool]:
    """(checkpoint, whether it was picked by default): `given`, else the first pipeline checkpoint present."""
    if given:
        return Path(given), False
    for name in DEFAULT_CHECKPOINTS:
        path = Path(root) / name
        if path.is_file():
            return path, True
    raise UserError(f"{command}: no --checkpoint given and none of {', '.join(DEFAULT_CHECKPOINTS)} exists here; "
                    "pass --checkpoint FILE.sess (or run `dvc repro` to train one)")
