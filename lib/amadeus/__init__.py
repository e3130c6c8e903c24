"""amadeus: learn expressive piano performance from MIDI and play it back."""

import contextlib
import io
import os

__version__ = "0.1.0"

if os.environ.get("CI"):
    # pyfluidsynth prints where it found libfluidsynth to stdout when CI is set, at import (pretty_midi
    # imports it too): import it once here, silenced, so commands' output stays what they print.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(ImportError, OSError):
        import fluidsynth  # noqa: F401
