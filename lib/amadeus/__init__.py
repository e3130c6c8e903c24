"""amadeus: learn expressive piano performance from MIDI and play it back."""

__version__ = "0.1.0"
