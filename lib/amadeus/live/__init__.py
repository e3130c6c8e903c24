"""Live mode: play a phrase on a MIDI keyboard, hear the model continue it, play again (docs/live.md).

    config     LiveConfig: the session's options; parse_handover (silence, or a controller such as cc67)
    ports      MIDI in and out behind one small interface: mido/rtmidi, fluidsynth, in-memory loopback
    phrase     Phrase: what the player played, stamped on arrival, as MIDI; final_prefix for priming
    stream     StreamDecoder: the answer's events -> timed note on/off, as codec.decode reads them
    scheduler  Scheduler: the thread that sends each message at its time
    turn       Turn: one phrase and its answer, with its latency figures; stats (percentiles)
    session    LiveSession: listen, prime, hand over, answer, listen again; Watcher: what it tells a display
    players    play a MIDI file into a session as a player would (--input-file, tests, bench)
    cli        `amadeus live`

A turn: the input port's callback adds each message to the phrase; while the player plays, the
session feeds the final part of the phrase's encoding to the model; at the hand-over it feeds the rest,
samples the answer event by event, decodes it into note on/off with due times and queues them for
the scheduler, which sends them; a key played meanwhile stops the answer and starts the next phrase.
"""

from amadeus.live.cli import add_arguments, config_from_args, main, run
from amadeus.live.config import LiveConfig, parse_handover
from amadeus.live.phrase import FAR_SECONDS, PRIME_MARGIN, Phrase, final_prefix
from amadeus.live.players import file_player, midi_file_messages, phrase_messages, play_phrase
from amadeus.live.ports import MemoryBackend, MidoBackend, list_ports
from amadeus.live.scheduler import Scheduler, Sent
from amadeus.live.session import LiveSession, Watcher
from amadeus.live.stream import Codec, Note, StreamDecoder, notes_to_midi
from amadeus.live.turn import Turn, describe_turn, stats

__all__ = ["FAR_SECONDS", "PRIME_MARGIN", "Codec", "LiveConfig", "LiveSession", "MemoryBackend", "MidoBackend",
           "Note", "Phrase", "Scheduler", "Sent", "StreamDecoder", "Turn", "Watcher", "add_arguments",
           "config_from_args", "describe_turn", "file_player", "final_prefix", "list_ports", "main",
           "midi_file_messages", "notes_to_midi", "parse_handover", "phrase_messages", "play_phrase", "run", "stats"]
