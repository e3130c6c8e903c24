// amadeus studio: play a phrase (MIDI keyboard, on-screen keys, computer keys or a MIDI file),
// hand it over, then hear and watch the model's answer. Talks JSON to the server over /ws.

const $ = (id) => document.getElementById(id);

const LOWEST = 21;                     // A0
const HIGHEST = 108;                   // C8
const WHITE_KEYS = 52;
const BLACK_PCS = new Set([1, 3, 6, 8, 10]);
const NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
const RELEASE_S = 0.25;
const MAX_FILE_BYTES = 1024 * 1024;
const RETRY_MS = 5000;
const ROLL_FUTURE_MS = 3000;           // the roll shows this much time above the "now" line...
const ROLL_NOW_AT = 0.5;               // ...which sits at this fraction of its height
const SUSTAIN = 64;
const MAJOR_KEYS = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"];
const MINOR_KEYS = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"];
// Computer keys by physical position (KeyboardEvent.code), as semitones above the playing octave's C.
const KEY_OFFSETS = {
  KeyA: 0, KeyW: 1, KeyS: 2, KeyE: 3, KeyD: 4, KeyF: 5, KeyT: 6, KeyG: 7, KeyY: 8, KeyH: 9,
  KeyU: 10, KeyJ: 11, KeyK: 12, KeyO: 13, KeyL: 14, KeyP: 15, Semicolon: 16, Quote: 17,
};
const KEY_LETTERS = {
  KeyA: "a", KeyW: "w", KeyS: "s", KeyE: "e", KeyD: "d", KeyF: "f", KeyT: "t", KeyG: "g", KeyY: "y",
  KeyH: "h", KeyU: "u", KeyJ: "j", KeyK: "k", KeyO: "o", KeyL: "l", KeyP: "p", Semicolon: ";", Quote: "'",
};

const stats = { latencies: [], scheduled: [], errors: [] };
window.studio = { stats, ws: null, send };

// Tests read stats.errors: count what the browser would print as an uncaught error.
window.addEventListener("error", (e) => stats.errors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => stats.errors.push(String(e.reason)));

const noteName = (pitch) => NOTE_NAMES[pitch % 12] + (Math.floor(pitch / 12) - 1);
const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

/* ---------- messages on the page ---------- */

let messageTimer = 0;

function setStatus(text, state = text) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(messageTimer);
  messageTimer = setTimeout(() => { box.hidden = true; }, 10000);
}

/* ---------- sound: a sampler on WebAudio ---------- */

const audio = { ctx: null, master: null, samples: [], loaded: false };

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response;
}

// AudioBuffers need no AudioContext, so the samples load before the first gesture allows one.
async function loadSamples() {
  try {
    const index = await (await fetchOk("/samples/index.json")).json();
    const bytes = await (await fetchOk(index.data)).arrayBuffer();
    const frames = index.frames;
    if (bytes.byteLength < index.pitches.length * frames * 2) throw new Error("piano.pcm is shorter than index.json says");
    const view = new DataView(bytes);
    audio.samples = index.pitches.map((pitch, i) => {
      const buffer = new AudioBuffer({ length: frames, sampleRate: index.sample_rate, numberOfChannels: 1 });
      const channel = buffer.getChannelData(0);
      const base = i * frames * 2;
      for (let f = 0; f < frames; f++) channel[f] = view.getInt16(base + 2 * f, true) / 32768;
      return { pitch, buffer };
    }).sort((a, b) => a.pitch - b.pitch);
    audio.loaded = true;
    markReady();
  } catch (err) {
    showMessage(`No piano sound: ${err.message}`);
  }
  updateSoundButton();
}

// Autoplay policy: the context may only start after a user gesture, so make it on the first one.
function ensureAudio() {
  if (!audio.ctx) {
    audio.ctx = new AudioContext({ latencyHint: "interactive" });
    const compressor = new DynamicsCompressorNode(audio.ctx, { threshold: -10, ratio: 4 });
    audio.master = new GainNode(audio.ctx, { gain: 0.6 });
    audio.master.connect(compressor).connect(audio.ctx.destination);
    audio.ctx.addEventListener("statechange", updateSoundButton);
  }
  if (audio.ctx.state === "suspended") audio.ctx.resume().catch(() => {});
  updateSoundButton();
}

function updateSoundButton() {
  const button = $("sound-btn");
  const running = audio.ctx && audio.ctx.state === "running";
  button.hidden = running && audio.loaded;
  if (!audio.loaded && running) button.textContent = "loading sound…";
  else button.textContent = "click to enable sound";
}

function nearestSample(pitch) {
  let best = audio.samples[0];
  for (const s of audio.samples) if (Math.abs(s.pitch - pitch) < Math.abs(best.pitch - pitch)) best = s;
  return best;
}

// A voice is one sounding sample; `when` is in AudioContext seconds.
function startVoice(pitch, velocity, when) {
  if (!audio.ctx || !audio.samples.length) return null;
  const sample = nearestSample(pitch);
  const src = new AudioBufferSourceNode(audio.ctx, {
    buffer: sample.buffer, playbackRate: 2 ** ((pitch - sample.pitch) / 12),
  });
  const gain = new GainNode(audio.ctx, { gain: (velocity / 127) ** 1.6 });
  src.connect(gain).connect(audio.master);
  src.addEventListener("ended", () => gain.disconnect());
  src.start(when);
  return { src, gain };
}

function releaseVoice(voice, when) {
  if (!voice) return;
  const t = Math.max(when, audio.ctx.currentTime);
  // Drop a later release already planned, so a cancel can bring it forward.
  voice.gain.gain.cancelScheduledValues(t);
  voice.gain.gain.setTargetAtTime(0, t, RELEASE_S / 4);
  voice.src.stop(t + RELEASE_S * 1.5);
}

const audioNow = () => (audio.ctx ? audio.ctx.currentTime : 0);

/* ---------- the falling-notes roll ---------- */

const roll = { canvas: $("roll"), dpr: 1, notes: new Set(), keyX: new Map(), aiKeys: new Set() };
const COLOURS = { me: "#4fb3ff", ai: "#ffa94d", file: "#7ed491" };

function addRollNote(who, pitch, velocity, start, end = null) {
  const note = { who, pitch, velocity, start, end };
  roll.notes.add(note);
  return note;
}

function drawRoll() {
  requestAnimationFrame(drawRoll);
  const { canvas, dpr } = roll;
  const ctx = canvas.getContext("2d");
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  const now = performance.now();
  const nowY = h * ROLL_NOW_AT;
  const pxPerMs = nowY / ROLL_FUTURE_MS;
  const pastMs = (h - nowY) / pxPerMs;
  const y = (t) => nowY - (t - now) * pxPerMs;   // later is higher: planned notes fall onto the line

  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "rgba(255,255,255,0.035)";     // lanes under the black keys
  for (const k of roll.keyX.values()) if (k.black) ctx.fillRect(k.x, 0, k.w, h);

  const sounding = new Set();
  for (const note of roll.notes) {
    const end = note.end ?? Math.max(now, note.start);
    if (end < now - pastMs) { roll.notes.delete(note); continue; }
    const key = roll.keyX.get(note.pitch);
    if (!key) continue;
    if (note.who === "ai" && note.start <= now && end > now) sounding.add(note.pitch);
    const top = y(end);
    const height = Math.max(4, y(note.start) - top);
    if (top > h) continue;
    ctx.globalAlpha = 0.45 + 0.55 * (note.velocity / 127);
    ctx.fillStyle = COLOURS[note.who];
    ctx.fillRect(key.x + 1, top, Math.max(2, key.w - 2), height);
  }
  ctx.globalAlpha = 1;
  ctx.fillStyle = "rgba(255,255,255,0.55)";
  ctx.fillRect(0, nowY, w, 1);

  // Light the keys the answer is sounding, changing only those that differ from the last frame.
  for (const pitch of roll.aiKeys) if (!sounding.has(pitch)) keyElement(pitch)?.classList.remove("ai");
  for (const pitch of sounding) if (!roll.aiKeys.has(pitch)) keyElement(pitch)?.classList.add("ai");
  roll.aiKeys = sounding;
}

/* ---------- the player's own notes (every input goes through playerEvent) ---------- */

const player = { held: new Map(), sustained: [], sustainDown: false, rollOpen: new Map() };

// Send one MIDI event to the server and sound / draw it here at once.
function playerEvent(data, t = performance.now()) {
  send({ type: "midi", data, t });
  const [status, d1, d2] = data;
  const kind = status & 0xf0;
  if (kind === 0x90 && d2 > 0) playerNoteOn(d1, d2, t);
  else if (kind === 0x80 || kind === 0x90) playerNoteOff(d1, t);
  else if (kind === 0xb0 && d1 === SUSTAIN) setSustain(d2 >= 64);
}

function playerNoteOn(pitch, velocity, t) {
  playerNoteOff(pitch, t);   // a re-struck key (two inputs, or a lost note-off) ends the old note
  player.held.set(pitch, startVoice(pitch, velocity, audioNow()));
  player.rollOpen.set(pitch, addRollNote("me", pitch, velocity, t));
  keyElement(pitch)?.classList.add("down");
}

function playerNoteOff(pitch, t) {
  if (!player.held.has(pitch)) return;
  const voice = player.held.get(pitch);
  player.held.delete(pitch);
  if (player.sustainDown) player.sustained.push(voice);
  else releaseVoice(voice, audioNow());
  const note = player.rollOpen.get(pitch);
  if (note) note.end = t;
  player.rollOpen.delete(pitch);
  keyElement(pitch)?.classList.remove("down");
}

function setSustain(down) {
  player.sustainDown = down;
  $("sustain-btn").setAttribute("aria-pressed", String(down));
  if (!down) {
    for (const voice of player.sustained) releaseVoice(voice, audioNow());
    player.sustained = [];
  }
}

const pressSustain = (down) => playerEvent([0xb0, SUSTAIN, down ? 127 : 0]);

/* ---------- the answer: turns of scheduled notes ---------- */

const turns = new Map();   // turn -> { handoverT, latencyShown, cancelled, entries, open: pitch -> [entry] }

function turnState(turn) {
  if (!turns.has(turn)) turns.set(turn, { handoverT: null, latencyShown: false, cancelled: false, entries: [], open: new Map() });
  return turns.get(turn);
}

function scheduleNotes(msg) {
  const state = turnState(msg.turn);
  if (state.cancelled) return;   // notes already in flight when the answer was stopped
  const now = performance.now();
  const ctxNow = audioNow();
  let anyOn = false;
  for (const n of msg.notes) {
    const at = Math.max(n.t, now);   // a time in the past means "now"
    const when = ctxNow + (at - now) / 1000;
    if (n.kind === "on") {
      anyOn = true;
      const entry = { voice: startVoice(n.pitch, n.velocity, when), roll: addRollNote("ai", n.pitch, n.velocity, at) };
      state.entries.push(entry);
      if (!state.open.has(n.pitch)) state.open.set(n.pitch, []);
      state.open.get(n.pitch).push(entry);
      stats.scheduled.push({ turn: msg.turn, pitch: n.pitch, velocity: n.velocity, at_ms: at });
      midiOut.queue(msg.turn, [0x90, n.pitch, n.velocity], at);
    } else if (n.kind === "off") {
      const entry = state.open.get(n.pitch)?.shift();
      if (entry) {
        if (entry.voice) releaseVoice(entry.voice, when);
        entry.roll.end = Math.max(at, entry.roll.start);
      }
      midiOut.queue(msg.turn, [0x80, n.pitch, 0], at);
    }
  }
  if (anyOn && !state.latencyShown && state.handoverT !== null) {
    const latency = performance.now() - state.handoverT;
    state.latencyShown = true;
    stats.latencies.push(latency);
    $("latency").textContent = `answered in ${Math.round(latency)} ms`;
  }
}

// Drop the notes not yet sounded and release the sounding ones now.
function cancelTurn(turn) {
  const state = turns.get(turn);
  if (!state) return;
  state.cancelled = true;
  const now = performance.now();
  for (const { voice, roll: note } of state.entries) {
    if (note.start > now) {
      voice?.src.stop();
      roll.notes.delete(note);
    } else if (note.end === null || note.end > now) {
      releaseVoice(voice, audioNow());
      note.end = now;
    }
  }
  state.entries = [];
  state.open.clear();
  midiOut.cancel(turn);
}

const cancelAllTurns = () => { for (const turn of turns.keys()) cancelTurn(turn); };

/* ---------- Web MIDI in and out ---------- */

const midi = { access: null, input: null };

// Answer notes go out to a MIDI port a little ahead of time, so a cancel can still drop the rest.
const midiOut = {
  port: null, pending: [], sounding: new Map(), timer: 0,
  queue(turn, data, at) {
    if (!this.port) return;
    this.pending.push({ turn, data, at });
    if (!this.timer) this.timer = setInterval(() => this.flush(), 20);
  },
  flush() {
    const horizon = performance.now() + 60;
    const due = this.pending.filter((e) => e.at <= horizon);
    this.pending = this.pending.filter((e) => e.at > horizon);
    for (const e of due) {
      this.sendSafely(e.data, e.at);
      if (!this.sounding.has(e.turn)) this.sounding.set(e.turn, new Set());
      if (e.data[0] === 0x90) this.sounding.get(e.turn).add(e.data[1]);
      else this.sounding.get(e.turn).delete(e.data[1]);
    }
    if (!this.pending.length) { clearInterval(this.timer); this.timer = 0; }
  },
  cancel(turn) {
    this.pending = this.pending.filter((e) => e.turn !== turn);
    for (const pitch of this.sounding.get(turn) ?? []) this.sendSafely([0x80, pitch, 0]);
    this.sounding.delete(turn);
  },
  sendSafely(data, at) {
    try {
      this.port?.send(data, at);
    } catch (err) {
      showMessage(`MIDI out: ${err.message}`);
      this.port = null;
    }
  },
};

function fillPortSelect(select, ports) {
  const chosen = select.value;
  select.replaceChildren(new Option("none", ""));
  for (const port of ports.values()) select.add(new Option(port.name || port.id, port.id));
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
}

function refreshMidiPorts() {
  fillPortSelect($("midi-in"), midi.access.inputs);
  fillPortSelect($("midi-out"), midi.access.outputs);
  chooseMidiInput();
  midiOut.port = midi.access.outputs.get($("midi-out").value) ?? null;
}

function chooseMidiInput() {
  if (midi.input) midi.input.onmidimessage = null;
  midi.input = midi.access?.inputs.get($("midi-in").value) ?? null;
  if (midi.input) midi.input.onmidimessage = onMidiMessage;
}

function onMidiMessage(e) {
  const [status, d1 = 0, d2 = 0] = e.data;
  const kind = status & 0xf0;
  // Notes and controllers only (no clock or sysex), moved to channel 0 as the protocol wants.
  if (kind === 0x80 || kind === 0x90 || kind === 0xb0) playerEvent([kind, d1, d2], e.timeStamp);
}

async function setupMidi() {
  const note = $("midi-note");
  if (!navigator.requestMIDIAccess) {
    note.textContent = "No Web MIDI in this browser: play with the on-screen or computer keys.";
    $("midi-in").disabled = $("midi-out").disabled = true;
    return;
  }
  try {
    midi.access = await navigator.requestMIDIAccess();
  } catch {
    note.textContent = "MIDI devices not allowed: play with the on-screen or computer keys.";
    return;
  }
  midi.access.addEventListener("statechange", refreshMidiPorts);
  refreshMidiPorts();
}

/* ---------- the on-screen keyboard ---------- */

const keyboard = $("keyboard");
const keyElements = new Map();
const keyElement = (pitch) => keyElements.get(pitch);

function buildKeyboard() {
  for (let pitch = LOWEST; pitch <= HIGHEST; pitch++) {
    const key = document.createElement("div");
    key.className = BLACK_PCS.has(pitch % 12) ? "key black" : "key white";
    key.dataset.pitch = String(pitch);
    key.title = noteName(pitch);
    if (pitch % 12 === 0) key.dataset.label = noteName(pitch);
    keyElements.set(pitch, key);
    keyboard.append(key);
  }
}

// Key widths follow the stage width, but never below --min-white: a phone scrolls the keys instead.
function layoutKeyboard() {
  const stage = $("stage");
  const minWhite = parseFloat(getComputedStyle(stage).getPropertyValue("--min-white")) || 22;
  const white = Math.max(minWhite, stage.clientWidth / WHITE_KEYS);
  const black = white * 0.62;
  let whiteIndex = 0;
  roll.keyX.clear();
  for (const [pitch, key] of keyElements) {
    const isBlack = BLACK_PCS.has(pitch % 12);
    const x = isBlack ? whiteIndex * white - black / 2 : whiteIndex * white;
    const w = isBlack ? black : white;
    key.style.left = `${x}px`;
    key.style.width = `${w}px`;
    roll.keyX.set(pitch, { x, w, black: isBlack });
    if (!isBlack) whiteIndex++;
  }
  $("stage-inner").style.width = `${WHITE_KEYS * white}px`;
  roll.dpr = Math.min(2, window.devicePixelRatio || 1);   // sharp enough, and a phone-wide roll stays small
  roll.canvas.width = Math.round(roll.canvas.clientWidth * roll.dpr);
  roll.canvas.height = Math.round(roll.canvas.clientHeight * roll.dpr);
}

// Bring the computer keyboard's octave into view (on a phone only part of the keys fit).
function scrollToPlayingOctave() {
  const key = roll.keyX.get(computer.base());
  if (key) $("stage").scrollLeft = key.x - $("stage").clientWidth / 2 + 5 * key.w;
}

const pointers = new Map();   // pointerId -> pitch held by that finger or mouse

function keyAt(x, y) {
  const el = document.elementFromPoint(x, y)?.closest("[data-pitch]");
  return el && keyboard.contains(el) ? el : null;
}

// Nearer the front edge of a key is louder, as on a piano played deeper into the key.
function velocityAt(key, clientY) {
  const rect = key.getBoundingClientRect();
  return Math.round(40 + 80 * clamp((clientY - rect.top) / rect.height, 0, 1));
}

function pointerPress(e, key) {
  const pitch = Number(key.dataset.pitch);
  pointers.set(e.pointerId, pitch);
  playerEvent([0x90, pitch, velocityAt(key, e.clientY)]);
}

function pointerRelease(pointerId) {
  if (!pointers.has(pointerId)) return;
  playerEvent([0x80, pointers.get(pointerId), 0]);
  pointers.delete(pointerId);
}

keyboard.addEventListener("pointerdown", (e) => {
  const key = e.target.closest("[data-pitch]");
  if (!key || e.button !== 0) return;
  e.preventDefault();
  // Touch captures the pointer to the first key; release it so a slide reaches the next keys.
  if (keyboard.hasPointerCapture?.(e.pointerId)) keyboard.releasePointerCapture(e.pointerId);
  if (key.hasPointerCapture(e.pointerId)) key.releasePointerCapture(e.pointerId);
  pointerPress(e, key);
});

keyboard.addEventListener("pointermove", (e) => {
  if (!pointers.has(e.pointerId)) return;
  const key = keyAt(e.clientX, e.clientY);
  if (key && Number(key.dataset.pitch) === pointers.get(e.pointerId)) return;
  pointerRelease(e.pointerId);
  if (key) pointerPress(e, key);
});

for (const type of ["pointerup", "pointercancel"]) window.addEventListener(type, (e) => pointerRelease(e.pointerId));
keyboard.addEventListener("contextmenu", (e) => e.preventDefault());

/* ---------- the computer keyboard ---------- */

const computer = {
  octave: 0,   // shift from C4, by z / x
  typed: new Map(),   // KeyboardEvent.code -> pitch sounding
  base() { return 60 + 12 * this.octave; },
};

function shiftOctave(by) {
  computer.octave = clamp(computer.octave + by, -3, 2);
  $("octave-label").textContent = `a = ${noteName(computer.base())}`;
  for (const key of keyElements.values()) delete key.dataset.letter;
  for (const [code, offset] of Object.entries(KEY_OFFSETS)) {
    const key = keyElement(computer.base() + offset);
    if (key) key.dataset.letter = KEY_LETTERS[code];
  }
  scrollToPlayingOctave();
}

// Keys typed into a text field or a list are for that field, not the piano.
function isTyping(target) {
  if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
  return target.tagName === "INPUT" && target.type !== "range";
}

// Enter on a button reached with Tab presses that button; after a mouse click Enter still hands over.
let tabbing = false;
window.addEventListener("pointerdown", () => { tabbing = false; }, { capture: true });

window.addEventListener("keydown", (e) => {
  if (e.code === "Tab") tabbing = true;
  if (e.ctrlKey || e.metaKey || e.altKey || isTyping(e.target)) return;
  if (e.code === "Enter" && tabbing && e.target.closest("button, a")) return;
  if (e.code in KEY_OFFSETS) {
    e.preventDefault();
    if (e.repeat || computer.typed.has(e.code)) return;
    const pitch = computer.base() + KEY_OFFSETS[e.code];
    computer.typed.set(e.code, pitch);
    playerEvent([0x90, pitch, 80]);
  } else if (e.code === "Space") {
    e.preventDefault();   // no page scroll, no click on a focused button
    if (!e.repeat) pressSustain(true);
  } else if (e.code === "Enter" || e.code === "NumpadEnter") {
    e.preventDefault();
    if (!e.repeat) handOver();
  } else if (e.code === "KeyZ" || e.code === "KeyX") {
    if (!e.repeat) shiftOctave(e.code === "KeyZ" ? -1 : 1);
  }
});

window.addEventListener("keyup", (e) => {
  if (computer.typed.has(e.code)) {
    playerEvent([0x80, computer.typed.get(e.code), 0]);
    computer.typed.delete(e.code);
  } else if (e.code === "Space" && !isTyping(e.target)) {
    e.preventDefault();
    pressSustain(false);
  }
});

// A key or finger held while the window loses focus would never send its note-off.
window.addEventListener("blur", () => {
  for (const pitch of computer.typed.values()) playerEvent([0x80, pitch, 0]);
  computer.typed.clear();
  for (const id of [...pointers.keys()]) pointerRelease(id);
});

/* ---------- MIDI files ---------- */

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

async function sendFile(file) {
  if (!file) return;
  if (file.size > MAX_FILE_BYTES) {
    showMessage(`"${file.name}" is ${Math.ceil(file.size / 1024)} KB: files over 1 MB are refused.`);
    return;
  }
  const data = toBase64(await file.arrayBuffer());
  if (send({ type: "file", name: file.name, data })) showMessage(`Sent "${file.name}".`);
}

$("file-input").addEventListener("change", (e) => {
  sendFile(e.target.files[0]);
  e.target.value = "";   // choosing the same file again should send it again
});

const carriesFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
document.addEventListener("dragover", (e) => {
  if (!carriesFiles(e)) return;
  e.preventDefault();
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", (e) => {
  if (!e.relatedTarget) document.body.classList.remove("dragging");
});
document.addEventListener("drop", (e) => {
  if (!carriesFiles(e)) return;
  e.preventDefault();
  document.body.classList.remove("dragging");
  sendFile(e.dataTransfer.files[0]);
});

/* ---------- settings ---------- */

// Protocol key -> [element id, how to read it].
const SETTINGS = {
  model: ["model", "text"], temperature: ["temperature", "number"], length_unit: ["length-unit", "text"],
  seconds: ["length-seconds", "number"], bars: ["length-bars", "number"], bpm: ["bpm", "number"],
  beats_per_bar: ["beats-per-bar", "number"], silence_ms: ["silence-ms", "number"],
  handover: ["handover", "text"], key: ["key", "optional"], lowest: ["lowest", "optional"],
  highest: ["highest", "optional"], max_polyphony: ["max-polyphony", "number"],
  dynamics: ["dynamics", "text"], keep_phrases: ["keep-phrases", "bool"],
};
let settingsPending = false;   // an "error" right after a settings message is about the settings

function fillKeySelect() {
  const select = $("key");
  select.add(new Option("any", ""));
  select.add(new Option("auto (from my phrase)", "auto"));
  for (const tonic of MAJOR_KEYS) select.add(new Option(`${tonic} major`));
  for (const tonic of MINOR_KEYS) select.add(new Option(`${tonic} minor`));
}

function readSettings() {
  const settings = {};
  for (const [name, [id, kind]] of Object.entries(SETTINGS)) {
    const el = $(id);
    const text = el.value.trim();
    if (kind === "bool") settings[name] = el.checked;
    else if (kind === "number") settings[name] = text === "" ? null : Number(text);
    else if (kind === "optional") settings[name] = text === "" ? null : text;
    else settings[name] = el.value;
  }
  return settings;
}

function applySettings(settings) {
  for (const [name, [id, kind]] of Object.entries(SETTINGS)) {
    const el = $(id);
    // The field being edited keeps what the player is typing; its change sends it and brings the reply.
    if (!(name in settings) || el === document.activeElement) continue;
    const value = settings[name];
    if (kind === "bool") { el.checked = Boolean(value); continue; }
    const text = value === null ? "" : String(value);
    // A value the page does not list (a key spelled differently, say) is still shown.
    if (el.tagName === "SELECT" && ![...el.options].some((o) => o.value === text)) el.add(new Option(text));
    el.value = text;
  }
  showSettingsState();
}

function showSettingsState() {
  const unit = $("length-unit").value;
  for (const el of document.querySelectorAll("[data-unit]")) el.hidden = el.dataset.unit !== unit;
  $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  $("silence-ms").disabled = $("handover").value !== "silence";
}

function fillModels(models) {
  const select = $("model");
  select.replaceChildren(...models.map((m) => new Option(m.label || m.id, m.id)));
}

$("settings").addEventListener("submit", (e) => e.preventDefault());
$("settings").addEventListener("input", (e) => { if (e.target.id === "temperature") showSettingsState(); });
$("settings").addEventListener("change", () => {
  showSettingsState();
  settingsPending = send({ type: "settings", settings: readSettings() });
});

/* ---------- takes ---------- */

let session = "";

function downloadLink(text, url) {
  const a = document.createElement("a");
  a.href = url;
  a.download = url.split("/").pop();
  a.textContent = text;
  return a;
}

// A take may come twice for one turn: first the MIDI, then with the WAV and PNG rendered.
function showTake(msg) {
  const id = `${session}:${msg.turn}`;
  const list = $("takes");
  let item = [...list.children].find((li) => li.dataset.take === id);
  if (!item) {
    item = document.createElement("li");
    item.dataset.take = id;
    list.prepend(item);
  }
  const title = document.createElement("span");
  title.className = "take-title";
  title.textContent = msg.title || `take ${msg.turn + 1}`;
  const parts = [title];
  if (msg.midi) parts.push(downloadLink("MIDI", msg.midi));
  if (msg.wav) parts.push(downloadLink("WAV", msg.wav));
  if (msg.png) {
    const link = downloadLink("", msg.png);
    const img = document.createElement("img");
    img.src = msg.png;
    img.alt = `piano roll of ${title.textContent}`;
    link.append(img);
    parts.push(link);
  }
  item.replaceChildren(...parts);
  document.querySelector(".empty-takes").hidden = true;
}

/* ---------- the socket ---------- */

let ws = null;
let gotReady = false;
let busyMessage = "";
let lastConnect = -Infinity;

function send(msg) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  // Every message carries the page's clock: the server maps its times onto it (docs/studio.md).
  ws.send(JSON.stringify({ t: performance.now(), ...msg }));
  return true;
}

function handOver() {
  if (!send({ type: "handover", t: performance.now() })) showMessage("Not connected to the studio yet.");
}

function markReady() {
  if (audio.loaded && gotReady) document.body.dataset.ready = "1";
}

function connect() {
  lastConnect = performance.now();
  busyMessage = "";
  setStatus("connecting");
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  window.studio.ws = ws;
  ws.addEventListener("message", (e) => {
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      showMessage("The server sent something that is not JSON.");
      return;
    }
    handleMessage(msg);
  });
  ws.addEventListener("close", () => {
    cancelAllTurns();
    // Never retry faster than every RETRY_MS, however quickly the server closes.
    const wait = Math.max(RETRY_MS - (performance.now() - lastConnect), 1000);
    const why = busyMessage ? `busy: ${busyMessage}` : "disconnected";
    setStatus(`${why} (retrying in ${Math.round(wait / 1000)} s)`, busyMessage ? "busy" : "disconnected");
    setTimeout(connect, wait);
  });
}

function handleMessage(msg) {
  switch (msg.type) {
    case "ready":  // also after a change of model: a new session, whose turns count from 0 again
      session = msg.session ?? "";
      turns.clear();
      fillModels(msg.models ?? []);
      applySettings(msg.settings ?? {});
      gotReady = true;
      markReady();
      setStatus("listening");
      break;
    case "busy":
      busyMessage = msg.message || "the studio is busy";
      setStatus(`busy: ${busyMessage}`, "busy");
      break;
    case "settings":
      settingsPending = false;
      $("settings-error").textContent = "";
      applySettings(msg.settings ?? {});
      break;
    case "listening":
      setStatus("listening");
      break;
    case "answering":
      turnState(msg.turn).handoverT = msg.handover_t ?? null;
      for (const turn of turns.keys()) if (turn < msg.turn - 4) turns.delete(turn);
      setStatus("answering");
      break;
    case "phrase":
      for (const n of msg.notes ?? []) addRollNote("file", n.pitch, n.velocity, n.start, n.end);
      break;
    case "notes":
      scheduleNotes(msg);
      break;
    case "cancel":
      cancelTurn(msg.turn);
      break;
    case "done":
      setStatus("listening");
      break;
    case "take":
      showTake(msg);
      break;
    case "error":
      if (settingsPending) $("settings-error").textContent = msg.message;
      else showMessage(msg.message);
      settingsPending = false;
      break;
    case "log":
      $("log").textContent = msg.message;
      break;
  }
}

/* ---------- buttons and start-up ---------- */

$("handover-btn").addEventListener("click", handOver);
$("stop-btn").addEventListener("click", () => {
  send({ type: "stop" });
  cancelAllTurns();   // silence now, without waiting for the server's "cancel"
});
$("again-btn").addEventListener("click", () => send({ type: "again" }));
$("sustain-btn").addEventListener("click", () => pressSustain(!player.sustainDown));
$("octave-down").addEventListener("click", () => shiftOctave(-1));
$("octave-up").addEventListener("click", () => shiftOctave(1));
$("sound-btn").addEventListener("click", ensureAudio);
$("midi-in").addEventListener("change", chooseMidiInput);
$("midi-out").addEventListener("change", () => {
  midiOut.port = midi.access?.outputs.get($("midi-out").value) ?? null;
});
// Any of these counts as the user gesture the autoplay policy waits for.
for (const type of ["pointerdown", "keydown", "touchend"]) window.addEventListener(type, ensureAudio, { capture: true });
window.addEventListener("resize", layoutKeyboard);

buildKeyboard();
fillKeySelect();
showSettingsState();
layoutKeyboard();
shiftOctave(0);
updateSoundButton();
requestAnimationFrame(drawRoll);
loadSamples();
setupMidi();
connect();
