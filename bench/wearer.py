"""The conditions a wearer meets, rendered from real music: rooms, a phone's speaker, people
talking around, a crowd, the wearer's own voice, Opus, a player running fast, two songs at once.

bench/queries.py degrades short excerpts with recorded noise at fixed SNRs: that measures the
fingerprint. What a user of the Omi pendant meets is different: music from a loudspeaker some
metres away in a room, heard by a microphone on the chest, under other people's talk and the
wearer's own voice, coded by the device as Opus and decoded by Omi before it reaches the
webhook. This module renders whole streams of that, for bench/streams.py.

The signal path of `render`, in the order sound takes it:
    music (+ a second song) -> playback speed -> small speaker -> room (loudspeaker to chest,
    the wearer's body shadowing the direct sound) -> level (music at MUSIC_DBFS) + talkers in
    the same room + crowd + the wearer's voice -> Opus and back.
Rooms are pyroomacoustics shoebox rooms (image sources, at WORK_RATE) whose walls absorb more
at high frequencies than at low ones, with the air's absorption on top; their RT60 is set, by
inverse Sabine, at mid frequencies (500 Hz-1 kHz), as rooms are quoted. People stand as far
from the loudspeaker as they do in such rooms: mostly past the critical distance, where the
room's reverberation carries more energy than the direct sound. A first trial with uniform
walls and 1-4 m everywhere was far easier than a real tester's rooms and than the recorded
great hall of bench/corpus.py (C50 of +5..+13 dB against its -1 dB).

Deterministic in (seed, split): every random draw comes from a generator keyed on the seed, the
split and the part it is drawn for, so the dev split's rooms, positions, speakers, talkers and
noise are never the test split's (its speech clips and noise recordings are other files, see
bench/corpus.py), and a change to one part does not move the draws of another.
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyroomacoustics as pra
from pyroomacoustics.experimental import measure_rt60
from scipy.signal import butter, fftconvolve, lfilter, sosfilt

from bench.audio import (
    WORK_RATE,
    at_level,
    joined_speech,
    noise_segment,
    normalise_impulse_response,
    resample,
    rms,
    to_pcm16,
)
from bench.corpus import SPLITS, Corpus

# Seconds of music before the excerpt that `render` expects: the room's reverb tail (the big
# hall's RT60 is about 2 s) is then already there at t=0, as in a room that was never silent.
LEAD_SECONDS = 3.0
MUSIC_DBFS = -20.0  # the music's level at the microphone; every other level is relative to it
# Image-source reflection order, at most: past it a room costs seconds instead of a tenth of one,
# and the reflections it leaves out arrive after about one RT60, 60 dB down.
MAX_ORDER = 40
# Octave-band wall absorption: the mid-frequency coefficient Sabine gives, times
# (f / MID_FREQUENCY) ** tilt, the tilt drawn per room (soft furnishings, people and porous
# surfaces absorb treble; 0.1-0.3 makes 4 kHz absorb 1.2-1.7 times and 125 Hz 0.6-0.85 times
# as much as the mids).
OCTAVES = (125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0)
MID_FREQUENCY = 707.0  # between the 500 Hz and 1 kHz octaves
ABSORPTION_TILT = (0.1, 0.3)
MAX_ABSORPTION = 0.95
MID_BAND = (355.0, 1410.0)  # the 500 Hz and 1 kHz octaves together: where RT60 is measured
# The wearer's body between the loudspeaker and a chest microphone: the direct sound (its first
# DIRECT_SECONDS, as in a direct-to-reverberant ratio) loses up to BODY_SHADOW_DB above
# BODY_SHADOW_HZ (a torso is ~0.3 m across), scaled by (1 - cos angle) / 2 from the way the
# wearer faces: nothing facing the source, all of it with the source behind.
DIRECT_SECONDS = 0.0025
BODY_SHADOW_DB = -6.0
BODY_SHADOW_HZ = 1000.0
SMALL_SPEAKER_CORNER_HZ = (250.0, 400.0)  # a phone's or a small Bluetooth speaker's bass limit
SMALL_SPEAKER_Q = (1.0, 2.0)  # its resonance there: a peak of about 0-6 dB
MAX_TALKERS = 3
BABBLE_VOICES = (6, 10)  # voices overlaid, inclusive
UTTERANCE_SECONDS = (1.5, 4.0)  # the wearer's own voice: one remark
OWN_VOICE_DB = (0.0, 6.0)  # the wearer's voice over the music, while speaking (mouth ~20 cm away)
OPUS_BITRATES = (16, 24, 32)  # kbit/s a wearable's Opus stream runs at; the scenes use 24


@dataclass(frozen=True)
class RoomKind:
    """A kind of room; each stream draws its own from these ranges (metres, seconds)."""

    rt60: tuple[float, float]
    size: tuple[tuple[float, float], tuple[float, float], tuple[float, float]]  # length, width, height
    distance: tuple[float, float]  # loudspeaker to microphone, as people stand in such a room
    speaker_height: tuple[float, float]
    microphone_height: tuple[float, float]  # the wearer's chest; talkers' mouths are 0.3 m higher
    margin: float  # nothing closer to a wall than this
    # Share of the energy a wall scatters diffusely (0: every reflection specular, the plain
    # image-source model). Above 0 the room is simulated by image sources up to DIFFUSE_ORDER and
    # ray tracing for the rest, which gives the dense, random late reverberation recorded halls
    # have (C50 a few dB lower at the same RT60 and distance): peaks smear more than in a
    # specular room, which is why the harsh rooms use it.
    scattering: float = 0.0


ROOMS: dict[str, RoomKind] = {
    "living room": RoomKind((0.35, 0.45), ((4.0, 6.5), (3.5, 5.0), (2.4, 2.8)), (1.0, 4.0), (0.4, 1.8), (1.0, 1.4), 0.3),
    "café": RoomKind((0.6, 0.8), ((8.0, 14.0), (6.0, 10.0), (3.0, 3.6)), (2.0, 7.0), (0.8, 2.5), (1.0, 1.4), 0.4),
    # A car's cabin: the wearer sits, the door and dashboard speakers are within a metre or so.
    "car": RoomKind((0.15, 0.3), ((1.7, 2.1), (1.3, 1.5), (1.1, 1.25)), (0.5, 1.2), (0.3, 0.9), (0.55, 0.75), 0.15),
    "medium hall": RoomKind((1.2, 1.5), ((15.0, 22.0), (10.0, 15.0), (5.0, 8.0)), (3.0, 10.0), (1.0, 3.0), (1.2, 1.4), 0.5),
    "big hall": RoomKind((1.8, 2.2), ((28.0, 40.0), (18.0, 28.0), (9.0, 14.0)), (4.0, 15.0), (1.0, 3.0), (1.2, 1.4), 0.5),
    # Small floor area, hard walls, tall: a stairwell, a tiled hallway, a church's side aisle.
    # Its volume is a hundredth of the big hall's, so the critical distance is well under a
    # metre and everyone hears almost nothing but reverberation.
    "stairwell": RoomKind((1.4, 2.0), ((3.0, 5.0), (2.5, 4.0), (9.0, 15.0)), (2.0, 6.0), (0.8, 2.0), (1.2, 1.4), 0.3, 0.5),
    "diffuse hall": RoomKind((1.3, 2.0), ((15.0, 35.0), (10.0, 25.0), (6.0, 12.0)), (4.0, 12.0), (1.0, 3.0), (1.2, 1.4), 0.5, 0.4),
}
DIFFUSE_ORDER = 3  # image-source order of a scattering room; ray tracing carries the rest
DIFFUSE_RAYS = 8000  # rays per source: a dense enough tail at 1-2 s a source
DIFFUSE_RECEIVER_METRES = 1.0  # the ray tracer's receiver sphere: bigger needs fewer rays


@dataclass(frozen=True)
class Scene:
    """A whole listening condition. A stream draws one of `rooms` (none: the music is heard as
    recorded); SNRs are in dB below the music at the microphone; `music=False` renders the
    same scene with the loudspeaker silent (for false matches), levels as if it played."""

    rooms: tuple[str, ...] = ()
    small_speaker: bool = False
    talk_snr: float | None = None  # people talking in the room, all of them together
    voices: tuple[int, int] = (1, 3)  # how many (drawn per stream, inclusive), from MAX_TALKERS places
    crowd_snr: float | None = None  # an ambient recording and babble
    voice_fraction: float = 0.0  # of the time the wearer speaks
    opus_kbps: int | None = None
    speed: float = 1.0  # playback speed: pitch and tempo together
    second_song_db: float | None = None  # another song mixed in at this level to the target
    music: bool = True
    # Seconds of the scene (talk, crowd, the wearer) before the loudspeaker starts the song:
    # the buffer then holds talk before the music, as when a song comes on mid-conversation.
    music_after: float = 0.0


TARGET_ROOMS = ("living room", "café", "medium hall")  # RT60 <= 1.5 s
# As reverberant as recorded halls and stairwells: RT60 1.3-2 s, diffuse late reverberation,
# people past the critical distance.
REVERBERANT_ROOMS = ("stairwell", "diffuse hall")
REVERBERANT_SCENE = "reverberant room: small speaker, RT60 1.3-2 s, 6 voices +5 dB, wearer 40 %, opus 24"
PARTY_SCENE = "party: reverberant room, small speaker, 8 voices 0 dB, wearer 40 %, opus 24"
# The condition the engine is tuned for: what most listening to music around people sounds like.
TARGET_SCENE = "room: small speaker, RT60<=1.5 s, talk +5 dB, wearer's voice 40 %, opus 24 kbit/s"
SCENES: dict[str, Scene] = {
    "clean": Scene(),
    "crowd 0 dB + opus": Scene(crowd_snr=0.0, opus_kbps=24),
    TARGET_SCENE: Scene(
        rooms=TARGET_ROOMS, small_speaker=True, talk_snr=5.0, voice_fraction=0.4, opus_kbps=24
    ),
    "big hall + talk": Scene(rooms=("big hall",), talk_snr=5.0, opus_kbps=24),
    "car + talk": Scene(rooms=("car",), talk_snr=5.0, opus_kbps=24),
    REVERBERANT_SCENE: Scene(
        rooms=REVERBERANT_ROOMS, small_speaker=True, talk_snr=5.0, voices=(6, 6), voice_fraction=0.4, opus_kbps=24
    ),
    PARTY_SCENE: Scene(
        rooms=REVERBERANT_ROOMS, small_speaker=True, talk_snr=0.0, voices=(8, 8), voice_fraction=0.4, opus_kbps=24
    ),
    "bar: 4-12 voices -5 dB, crowd -5 dB, wearer, opus 16": Scene(
        rooms=TARGET_ROOMS, talk_snr=-5.0, voices=(4, 12), crowd_snr=-5.0, voice_fraction=0.4, opus_kbps=16
    ),
    "song after 10 s of talk: reverberant room, 6 voices +5 dB, opus 32": Scene(
        rooms=REVERBERANT_ROOMS, small_speaker=True, talk_snr=5.0, voices=(6, 6), voice_fraction=0.4, opus_kbps=32,
        music_after=10.0,
    ),
    "speed +2 %": Scene(speed=1.02),
    "speed -2 %": Scene(speed=0.98),
    "speed +2 % at +5 dB": Scene(speed=1.02, crowd_snr=5.0),
    "two songs 0 dB": Scene(second_song_db=0.0),
    "two songs -5 dB": Scene(second_song_db=-5.0),
    "talk in a room, no music": Scene(
        rooms=TARGET_ROOMS, talk_snr=5.0, voice_fraction=0.4, opus_kbps=24, music=False
    ),
    "crowd noise, no music": Scene(crowd_snr=0.0, opus_kbps=24, music=False),
    "party, no music": Scene(
        rooms=REVERBERANT_ROOMS, small_speaker=True, talk_snr=0.0, voices=(8, 8), voice_fraction=0.4, opus_kbps=24,
        music=False,
    ),
}


def _rng(seed: int, split: str, part: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), zlib.crc32(part.encode())])


@dataclass(frozen=True)
class SimulatedRoom:
    kind: str
    size: tuple[float, float, float]
    rt60: float  # at mid frequencies, measured on the loudspeaker's response (decay_rt60)
    absorption_tilt: float
    speaker: tuple[float, float, float]
    microphone: tuple[float, float, float]
    talkers: tuple[tuple[float, float, float], ...]
    facing: float  # the wearer's heading, radians
    body_shadow_db: tuple[float, ...]  # on each source's direct sound
    # Raw, to the microphone on the chest, body included: the loudspeaker's, then each talker's,
    # and the sample where each one's direct sound peaks.
    responses: tuple[np.ndarray, ...]
    direct: tuple[int, ...]

    def impulse_response(self, source: int = 0) -> np.ndarray:
        """Source `source` (0: the loudspeaker, 1..MAX_TALKERS: a talker) to the microphone,
        normalised like bench/queries.py's recorded rooms: from the direct sound, unit energy.
        Past the critical distance a reflection can peak higher than the direct sound, so the
        start is where the geometry puts the direct sound, not the largest sample."""
        return normalise_impulse_response(self.responses[source], self.direct[source])


def _positions(kind: RoomKind, size: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Loudspeaker, microphone at a drawn distance from it, and talkers, all inside the margins."""
    low, high = np.full(3, kind.margin), size - kind.margin
    for _ in range(1000):
        speaker = rng.uniform(low, high)
        speaker[2] = np.clip(rng.uniform(*kind.speaker_height), low[2], high[2])
        height = np.clip(rng.uniform(*kind.microphone_height), low[2], high[2])
        across = np.sqrt(max(rng.uniform(*kind.distance) ** 2 - (height - speaker[2]) ** 2, 0.01))
        angle = rng.uniform(0, 2 * np.pi)
        microphone = np.array([speaker[0] + across * np.cos(angle), speaker[1] + across * np.sin(angle), height])
        if np.all(microphone >= low) and np.all(microphone <= high):
            break
    else:
        raise ValueError(f"no loudspeaker and microphone {kind.distance} m apart fit in a {size} m room")
    talkers: list[np.ndarray] = []
    while len(talkers) < MAX_TALKERS:
        mouth = rng.uniform(low, high)
        mouth[2] = np.clip(rng.uniform(*kind.microphone_height) + 0.3, low[2], high[2])
        if np.linalg.norm(mouth - microphone) >= min(0.5, kind.distance[0]):
            talkers.append(mouth)
    return speaker, microphone, talkers


def mid_band(h: np.ndarray) -> np.ndarray:
    """The response in MID_BAND, where a room's RT60 is quoted."""
    return sosfilt(butter(4, MID_BAND, "bandpass", fs=WORK_RATE, output="sos"), h)


def decay_rt60(h: np.ndarray) -> float:
    """RT60 of an impulse response at mid frequencies, extrapolated from the Schroeder decay of
    its MID_BAND between -5 and -25 dB."""
    return float(measure_rt60(mid_band(h), fs=WORK_RATE, decay_db=20))


def _walls(rt60: float, size: np.ndarray, tilt: float, scattering: float) -> tuple[pra.Material, int]:
    """Walls whose mid-frequency absorption gives `rt60` by Sabine, tilted towards the treble,
    and the image-source order that reaches that far."""
    absorption, order = pra.inverse_sabine(rt60, size)
    coefficients = np.clip(absorption * (np.asarray(OCTAVES) / MID_FREQUENCY) ** tilt, 0.01, MAX_ABSORPTION)
    material = pra.Material(
        {"description": "tilted", "coeffs": coefficients.tolist(), "center_freqs": list(OCTAVES)}, scattering or None
    )
    return material, min(order, MAX_ORDER)


def _shoebox(
    size: np.ndarray, rt60: float, tilt: float, sources: list[np.ndarray], microphone: np.ndarray, scattering: float, seed: int
) -> tuple[np.ndarray, ...]:
    walls, order = _walls(rt60, size, tilt, scattering)
    diffuse = scattering > 0
    room = pra.ShoeBox(size, fs=WORK_RATE, materials=walls, max_order=DIFFUSE_ORDER if diffuse else order, air_absorption=True)
    if diffuse:
        room.set_ray_tracing(n_rays=DIFFUSE_RAYS, receiver_radius=DIFFUSE_RECEIVER_METRES)
        pra.random.seed(seed)  # the ray tracer's own generator: the same room every time
    for source in sources:
        room.add_source(source)
    room.add_microphone(microphone)
    room.compute_rir()
    return tuple(np.asarray(h, dtype=np.float32) for h in room.rir[0])


def _direct_sample(source: np.ndarray, microphone: np.ndarray) -> int:
    """Where the direct sound peaks in a pyroomacoustics response: its travel time, plus the
    half-length of the fractional-delay filter every arrival is centred in."""
    travel = np.linalg.norm(source - microphone) / pra.constants.get("c") * WORK_RATE
    return int(round(travel)) + pra.constants.get("frac_delay_length") // 2


def body_shadow(h: np.ndarray, direct: int, gain_db: float) -> np.ndarray:
    """`h` with its direct sound (from the start of its fractional-delay filter, before sample
    `direct`, to DIRECT_SECONDS after it) shelved by `gain_db` above BODY_SHADOW_HZ; the
    reflections, from everywhere, are left as they are. A first-order low-pass plus its
    complementary high-pass is the identity, so scaling the high-pass part alone is a shelf."""
    start = max(0, direct - pra.constants.get("frac_delay_length") // 2)
    end = min(len(h), direct + int(DIRECT_SECONDS * WORK_RATE))
    head = np.zeros_like(h)
    head[start:end] = h[start:end]
    high = sosfilt(butter(1, BODY_SHADOW_HZ, "highpass", fs=WORK_RATE, output="sos"), head)
    return (h + (10 ** (gain_db / 20) - 1) * high).astype(np.float32)


def _shadow_db(facing: float, microphone: np.ndarray, source: np.ndarray) -> float:
    """BODY_SHADOW_DB scaled by how far behind the wearer facing `facing` the source is."""
    bearing = np.arctan2(source[1] - microphone[1], source[0] - microphone[0])
    return BODY_SHADOW_DB * (1 - np.cos(bearing - facing)) / 2


@lru_cache(maxsize=256)  # a run's streams revisit their rooms scene after scene
def simulate_room(kind: str, seed: int, split: str) -> SimulatedRoom:
    """A room of `kind` (a key of ROOMS) with its size, RT60 and positions drawn from
    (seed, split); cached, since one stream's loudspeaker and talkers share it.

    Sabine's formula assumes a diffuse field, which a shoebox with specular walls does not have:
    its decay comes out up to 40 % off. So the room is simulated twice, the second time asking
    for the RT60 scaled by how far the first one's measured decay (decay_rt60 of the
    loudspeaker's response) missed; that lands within a few per cent.
    """
    k = ROOMS[kind]
    rng = _rng(seed, split, f"room {kind}")
    size = np.array([rng.uniform(*r) for r in k.size])
    rt60 = float(rng.uniform(*k.rt60))
    tilt = float(rng.uniform(*ABSORPTION_TILT))
    speaker, microphone, talkers = _positions(k, size, rng)
    facing = float(rng.uniform(0, 2 * np.pi))
    sources = [speaker, *talkers]
    tracer_seed = int(rng.integers(2**31))
    first = _shoebox(size, rt60, tilt, sources, microphone, k.scattering, tracer_seed)
    raw = _shoebox(size, rt60 * rt60 / decay_rt60(first[0]), tilt, sources, microphone, k.scattering, tracer_seed)
    shadows = tuple(_shadow_db(facing, microphone, s) for s in sources)
    direct = tuple(_direct_sample(s, microphone) for s in sources)
    return SimulatedRoom(
        kind=kind,
        size=tuple(size),
        rt60=decay_rt60(raw[0]),
        absorption_tilt=tilt,
        speaker=tuple(speaker),
        microphone=tuple(microphone),
        talkers=tuple(tuple(t) for t in talkers),
        facing=facing,
        body_shadow_db=shadows,
        responses=tuple(body_shadow(h, d, g) for h, d, g in zip(raw, direct, shadows)),
        direct=direct,
    )


def impulse_response(kind: str, seed: int, split: str, source: int = 0) -> np.ndarray:
    """The normalised response of `source` in the room `simulate_room` draws for (seed, split)."""
    return simulate_room(kind, seed, split).impulse_response(source)


def resonant_high_pass(corner: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """A driver in a small sealed box: second-order high-pass at its resonance `corner` with
    quality `q` (12 dB per octave below, a peak of about q there), as a biquad (b, a) from the
    bilinear transform of s^2 / (s^2 + s w/q + w^2), the corner prewarped."""
    w = np.tan(np.pi * corner / WORK_RATE)
    a = np.array([1 + w / q + w * w, 2 * (w * w - 1), 1 - w / q + w * w])
    return np.array([1.0, -2.0, 1.0]) / a[0], a / a[0]


def small_speaker(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A phone or a small Bluetooth speaker: falling 12 dB per octave below its resonance in
    SMALL_SPEAKER_CORNER_HZ, a peak there, and little above ~7 kHz."""
    b, a = resonant_high_pass(rng.uniform(*SMALL_SPEAKER_CORNER_HZ), rng.uniform(*SMALL_SPEAKER_Q))
    low_pass = butter(4, rng.uniform(6500, 7500), "lowpass", fs=WORK_RATE, output="sos")
    return sosfilt(low_pass, lfilter(b, a, x)).astype(np.float32)


def speed_change(x: np.ndarray, speed: float) -> np.ndarray:
    """Played `speed` times as fast, pitch and tempo together (a turntable or a radio running
    fast): a 1.02 speed-up is 2 % shorter and 2 % higher. Speed is exact to 1/WORK_RATE."""
    return resample(x, int(round(WORK_RATE * speed)), WORK_RATE)


@lru_cache(maxsize=1)
def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("Opus coding needs ffmpeg with libopus on PATH (Debian: apt-get install ffmpeg)")
    encoders = subprocess.run([path, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    if " libopus " not in encoders:
        raise RuntimeError(f"{path} has no libopus encoder: Opus coding needs an ffmpeg built with libopus")
    return path


def _pipe(arguments: list[str], data: bytes) -> bytes:
    proc = subprocess.run([_ffmpeg(), "-hide_banner", "-v", "error", *arguments], input=data, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(arguments)}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def opus(x: np.ndarray, kbps: int) -> np.ndarray:
    """Through Opus at `kbps` and back, as a device's stream is coded and Omi decodes it: PCM16
    at 16 kHz into ffmpeg's libopus and out again, over pipes (no files). Same length as `x`
    (Ogg's pre-skip keeps it aligned); scaled down first only if it would clip."""
    raw = ["-f", "s16le", "-ar", str(WORK_RATE), "-ac", "1"]
    coded = _pipe([*raw, "-i", "pipe:0", "-c:a", "libopus", "-b:a", f"{kbps}k", "-f", "ogg", "pipe:1"], to_pcm16(x).tobytes())
    decoded = np.frombuffer(_pipe(["-i", "pipe:0", *raw, "pipe:1"], coded), dtype=np.int16)
    y = decoded.astype(np.float32) / 32767
    return np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]


def synthetic_speech(rng: np.random.Generator, n: int) -> np.ndarray:
    """Speech-like sound where the corpus has no speech (CI): noise in the voice band, cut into
    syllables of 0.1-0.3 s with short gaps and a pause now and then."""
    voiced = sosfilt(butter(2, [200, 3500], "bandpass", fs=WORK_RATE, output="sos"), rng.standard_normal(n))
    envelope = np.zeros(n)
    t = 0
    while t < n:
        length = int(rng.uniform(0.1, 0.3) * WORK_RATE)
        envelope[t : t + length] = np.hanning(length)[: n - t]
        t += length + int(rng.uniform(0.02, 0.15 if rng.random() > 0.1 else 0.8) * WORK_RATE)
    return (voiced * envelope).astype(np.float32)


def _one_voice(material: Corpus, rng: np.random.Generator, n: int) -> np.ndarray:
    """One person talking for n samples: the split's speech clips in a random order."""
    if not material.speech:
        return synthetic_speech(rng, n)
    clips = rng.integers(len(material.speech), size=2 + n // (2 * WORK_RATE))  # clips last ~3.4 s
    return joined_speech([str(material.speech[i]) for i in clips], n)


def babble(material: Corpus, rng: np.random.Generator, n: int) -> np.ndarray:
    """BABBLE_VOICES people talking at once, each within 3 dB of the others."""
    voices = rng.integers(BABBLE_VOICES[0], BABBLE_VOICES[1] + 1)
    return sum(at_level(_one_voice(material, rng, n), 10 ** (rng.uniform(-3, 3) / 20)) for _ in range(voices))


def _talk(material: Corpus, room: SimulatedRoom | None, voices: tuple[int, int], rng: np.random.Generator, n: int) -> np.ndarray:
    """People in the room, as many as drawn from `voices`, each within 3 dB of the others,
    standing in groups at the room's MAX_TALKERS places (voice k at place k mod MAX_TALKERS;
    dry without a room). A place's voices share its response, so it is applied once per place."""
    lead = int(LEAD_SECONDS * WORK_RATE)
    count = int(rng.integers(voices[0], voices[1] + 1))
    places = np.zeros((min(count, MAX_TALKERS), lead + n), np.float32)
    for k in range(count):
        places[k % len(places)] += at_level(_one_voice(material, rng, lead + n), 10 ** (rng.uniform(-3, 3) / 20))
    if room is not None:
        places = np.stack([fftconvolve(p, room.impulse_response(1 + k))[: lead + n] for k, p in enumerate(places)])
    return places[:, lead:].sum(axis=0)


def _crowd(material: Corpus, rng: np.random.Generator, n: int) -> np.ndarray:
    """An ambient recording of the split with babble over it, within 3 dB of each other."""
    ambient, _ = noise_segment(tuple(str(p) for p in material.noise), rng, n)
    return at_level(ambient, 1.0) + at_level(babble(material, rng, n), 10 ** (rng.uniform(-3, 3) / 20))


def own_voice(material: Corpus, fraction: float, level: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """The wearer speaking `fraction` of the time, in remarks of UTTERANCE_SECONDS at random
    moments, at `level` (RMS while speaking). Dry: at ~20 cm from the mouth the direct sound
    is some 20 dB above the room's reverb."""
    active = int(round(fraction * n))
    if active == 0:
        return np.zeros(n, np.float32)
    lengths: list[int] = []
    while sum(lengths) < active:
        lengths.append(int(rng.uniform(*UTTERANCE_SECONDS) * WORK_RATE))
    lengths[-1] -= sum(lengths) - active
    gaps = np.floor(rng.dirichlet(np.ones(len(lengths) + 1)) * (n - active)).astype(int)
    speech = _one_voice(material, rng, n)
    gate = np.zeros(n, np.float32)
    fade = int(0.02 * WORK_RATE)
    t = 0
    for gap, length in zip(gaps, lengths):
        t += gap
        ramp = np.minimum(1.0, np.minimum(np.arange(length) + 1, np.arange(length)[::-1] + 1) / fade)
        gate[t : t + length] = ramp
        t += length
    voice = speech * gate
    return voice * (level / max(rms(voice[gate > 0]), 1e-12))


def render(music: np.ndarray, scene: Scene, seed: int, material: Corpus, second: np.ndarray | None = None) -> np.ndarray:
    """What the wearer's microphone sends, float32 at WORK_RATE, music at MUSIC_DBFS.

    `music` (and `second`, the other song of a two-song scene) starts with LEAD_SECONDS of what
    preceded the excerpt, so the room is not silent at t=0; the result is the excerpt only,
    (len(music) / WORK_RATE - LEAD_SECONDS) / scene.speed seconds long. A scene without music
    uses only the length of `music`; one with `music_after` plays the excerpt from then on (the
    stream's song offset is then where the music starts). `material` is the split
    (bench/corpus.py) whose speech and noise are used; its `split` also keys every random draw, with `seed`.
    """
    split = material.split
    lead = int(LEAD_SECONDS * WORK_RATE)
    if len(music) <= lead:
        raise ValueError(f"music must be longer than its {LEAD_SECONDS:g}-s lead")
    x = music.astype(np.float32) if scene.music else np.zeros(len(music), np.float32)
    if scene.second_song_db is not None:
        if second is None:
            raise ValueError("a two-song scene needs the second song")
        other = np.pad(second, (0, max(0, len(x) - len(second))))[: len(x)]
        x = x + at_level(other, rms(x[lead:]) * 10 ** (scene.second_song_db / 20))
    x = speed_change(x, scene.speed)
    lead = int(round(lead / scene.speed))
    n = len(x) - lead
    # The loudspeaker silent until `music_after`: the song's excerpt starts there, its lead
    # (which only a room that was never silent has) dropped.
    silent = lead + int(scene.music_after * WORK_RATE)
    if scene.music_after > 0:
        x = np.concatenate([np.zeros(silent, np.float32), x[lead:]])[: len(x)]
    if scene.small_speaker:
        x = small_speaker(x, _rng(seed, split, "small speaker"))
    room = None
    if scene.rooms:
        room = simulate_room(scene.rooms[_rng(seed, split, "room choice").integers(len(scene.rooms))], seed, split)
        x = fftconvolve(x, room.impulse_response(0))[: len(x)]
    level = 10 ** (MUSIC_DBFS / 20)
    x = (x[lead:] * (level / max(rms(x[silent:]), 1e-12))).astype(np.float32)  # the music's level while it plays
    if scene.talk_snr is not None:
        x += at_level(_talk(material, room, scene.voices, _rng(seed, split, "talk"), n), level / 10 ** (scene.talk_snr / 20))
    if scene.crowd_snr is not None:
        x += at_level(_crowd(material, _rng(seed, split, "crowd"), n), level / 10 ** (scene.crowd_snr / 20))
    if scene.voice_fraction > 0:
        voice_rng = _rng(seed, split, "own voice")
        loudness = level * 10 ** (voice_rng.uniform(*OWN_VOICE_DB) / 20)
        x += own_voice(material, scene.voice_fraction, loudness, voice_rng, n)
    if scene.opus_kbps is not None:
        x = opus(x, scene.opus_kbps)
    return x.astype(np.float32)
