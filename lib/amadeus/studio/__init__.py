"""The studio: play a phrase in a web browser and hear the model continue it (`amadeus serve`; docs/studio.md).

    settings  StudioSettings: the page's settings panel, checked, as live options and playing rules
    models    ModelShelf: the checkpoints offered, loaded once and shared by the tabs
    samples   the page's piano: notes rendered once from the SoundFont by fluidsynth
    tab       TabSession: one tab's live session (amadeus.live), its clock, takes and kept phrases
    server    the aiohttp app: the page, samples, takes and the WebSocket; make_app
    tls       a certificate made on this machine for --https
    cli       `amadeus serve`
    static/   the page: index.html, studio.css, studio.js (no outside scripts, fonts or sounds)
"""
