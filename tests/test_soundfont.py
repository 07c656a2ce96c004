"""The SoundFont reader and player against the SF2 specification and closed forms; bad SoundFont files."""
import logging
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from msg_edu.soundfont import SoundFont, SoundFontError, default_sf2, load_soundfont, write_sf2
from msg_edu.soundfont_player import (VolumeEnvelope, find_preset, find_voices, play_note, playback_step, read_sample,
                                      render_notes, render_voice, sample_region, velocity_attenuation)
from msg_edu.slakh_format import Note

SR = 44100
SINE = 0.5 * np.sin(2 * np.pi * 440 * np.arange(44000) / 44000)   # A4 at 44 kHz: exactly 100 points per period
ZONE = dict(sample=SINE, sample_rate=44000, root=69, loop=(4000, 44000), sampleModes=1)


def tc(seconds: float) -> int: return round(1200 * math.log2(seconds))


def fundamental(y: np.ndarray, sr: int = SR) -> float:
    "Strongest spectral peak (Hz): Hann window, 4x zero padding, parabolic refinement on log-magnitudes."
    n_fft = 1 << (int(np.ceil(np.log2(len(y)))) + 2)
    mag = np.abs(np.fft.rfft((y - y.mean()) * np.hanning(len(y)), n_fft))
    k = int(np.argmax(mag[1:])) + 1
    a, b, c = np.log(mag[k - 1:k + 2] + 1e-30)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / n_fft


def level_db(y: np.ndarray, t: float, width: float = 0.01) -> float:
    "Level of the 0.5-amplitude sine voice in a window centred at t (dB re full level)."
    seg = y[int((t - width / 2) * SR):int((t + width / 2) * SR)]
    return 20 * np.log10(np.sqrt(2 * np.mean(seg ** 2)) / 0.5 + 1e-12)


def cents(f: float, ref: float) -> float: return 1200 * math.log2(f / ref)


@pytest.fixture(scope="module")
def sine_sf(tmp_path_factory):
    return SoundFont(write_sf2(tmp_path_factory.mktemp("sf2") / "sine.sf2", [ZONE]))


@pytest.fixture(scope="module")
def gm():
    return load_soundfont()


def one_voice(sf, key=69, velocity=127, **gens):
    v = find_voices(sf, sf.presets[0, 0], key, velocity)[0]
    return type(v)({**v.gens, **gens}, v.sample)


# ---------------------------------------------------------------- the file
def test_written_soundfont_reads_back(sine_sf):
    assert list(sine_sf.presets) == [(0, 0)] and len(sine_sf.instruments) == 1 and len(sine_sf.samples) == 1
    s = sine_sf.samples[0]
    assert (s.start, s.end, s.start_loop, s.end_loop, s.sample_rate, s.original_pitch) == (0, 44000, 4000, 44000, 44000, 69)
    np.testing.assert_allclose(sine_sf.points[:44000], SINE, atol=1 / 32767)
    assert sine_sf.instruments[0].zones == [{"sampleModes": 1, "sampleID": 0}]


def test_timgm6mb_has_every_general_midi_program_and_eight_kits(gm):
    assert {p for b, p in gm.presets if b == 0} == set(range(128))
    assert {p for b, p in gm.presets if b == 128} == {0, 8, 16, 24, 25, 32, 40, 48}


def test_preset_generators_add_to_instrument_ones_as_the_spec_example(tmp_path):
    # SF2 9.4: a preset attackVolEnv of 2400 over instrument zones at the default and at 1200 gives -9600 and 3600
    sf = SoundFont(write_sf2(tmp_path / "l.sf2", [dict(ZONE, keyRange=(0, 63)), dict(ZONE, keyRange=(64, 127), attackVolEnv=1200)],
                             preset_generators={"attackVolEnv": 2400, "coarseTune": 12, "sampleModes": 0, "keyRange": (0, 100)}))
    voices = [find_voices(sf, sf.presets[0, 0], k, 100)[0] for k in (60, 70)]
    assert [v.gens["attackVolEnv"] for v in voices] == [-9600, 3600]
    assert all(v.gens["coarseTune"] == 12 and v.gens["sampleModes"] == 1 for v in voices)   # sampleModes: instrument-only
    assert find_voices(sf, sf.presets[0, 0], 101, 100) == []                               # outside the preset zone


def test_global_instrument_zone_is_the_default_of_the_others(tmp_path):
    sf = SoundFont(write_sf2(tmp_path / "g.sf2", [ZONE]))
    inst = sf.instruments[0]
    inst.global_zone["fineTune"] = 7
    assert find_voices(sf, sf.presets[0, 0], 69, 100)[0].gens["fineTune"] == 7
    inst.zones[0]["fineTune"] = -3                      # a zone's own value wins over the global one
    assert find_voices(sf, sf.presets[0, 0], 69, 100)[0].gens["fineTune"] == -3


# ---------------------------------------------------------------- pitch
@pytest.mark.parametrize("key", [33, 45, 57, 69, 81, 93, 100])
def test_rendered_fundamental_within_one_cent_of_the_key(sine_sf, key):
    v = one_voice(sine_sf, key)
    points, loop, _ = sample_region(sine_sf, v)
    y = read_sample(points, playback_step(v, key, SR), SR, loop)
    assert abs(cents(fundamental(y), 440 * 2 ** ((key - 69) / 12))) < 1.0


@pytest.mark.parametrize("gens, shift", [(dict(coarseTune=-12), -1200), (dict(fineTune=37), 37), (dict(scaleTuning=0), -1200),
                                         (dict(overridingRootKey=81), -1200), (dict(keynum=57), -2400)])
def test_tuning_generators_shift_by_their_cents(sine_sf, gens, shift):
    v = one_voice(sine_sf, 81, **gens)                 # key 81 sounds at 880 Hz untuned
    points, loop, _ = sample_region(sine_sf, v)
    y = read_sample(points, playback_step(v, 81, SR), SR, loop)
    assert abs(cents(fundamental(y), 880) - shift) < 1.0


def test_pitch_correction_of_the_sample_header(tmp_path):
    flat = 0.5 * np.sin(2 * np.pi * 440 * 2 ** (-30 / 1200) * np.arange(44000) / 44000)   # 30 cents flat ...
    sf = SoundFont(write_sf2(tmp_path / "c.sf2", [dict(ZONE, sample=flat, correction=30, loop=None, sampleModes=0)]))
    y = play_note(sf, sf.presets[0, 0], 69, 127, SR // 2, SR)                             # ... corrected on playback
    assert abs(cents(fundamental(y[:SR // 2]), 440)) < 1.0


def test_same_voice_an_octave_up_is_twice_the_frequency_on_real_samples(gm):
    for program, key in [(0, 57), (33, 33), (48, 57), (73, 69)]:
        v = find_voices(gm, gm.presets[0, program], key, 100)[0]
        low, high = (render_voice(gm, v, k, 100, SR, SR) for k in (key, key + 12))
        ratio = fundamental(high[SR // 20:SR // 2]) / fundamental(low[SR // 10:SR])
        assert abs(cents(ratio, 2.0)) < 1.0, (program, ratio)


# ---------------------------------------------------------------- loops
def seam_ratio(points, step, loop, n):
    y = read_sample(points, step, n, loop)
    laps = np.floor(np.maximum(np.arange(n) * step - loop[0], 0) / (loop[1] - loop[0]))
    seams = np.flatnonzero(np.diff(laps) > 0)
    steps = np.abs(np.diff(y))
    inside = np.ones(len(steps), bool); inside[seams] = False; inside &= np.arange(1, n) * step >= loop[0]
    return steps[seams].max() / steps[inside].max() if len(seams) else 0.0


def test_looped_sine_is_the_sine_and_a_bad_loop_is_caught(sine_sf):
    v = one_voice(sine_sf)
    points, loop, _ = sample_region(sine_sf, v)
    y = read_sample(points, playback_step(v, 69, SR), 3 * SR, loop)      # three seconds of a one-second sample
    np.testing.assert_allclose(y, 0.5 * np.sin(2 * np.pi * 440 * np.arange(3 * SR) / SR), atol=2e-3)
    assert seam_ratio(SINE, 1.0, (4000, 44000), 3 * 44000) <= 1.001
    assert seam_ratio(SINE, 1.0, (4000, 43975), 3 * 44000) > 2           # a quarter period short: a click


def test_timgm6mb_loops_have_no_click(gm):
    ratios = []
    for program in (0, 16, 19, 24, 33, 48, 52, 56, 65, 73, 80, 89):
        for key in (36, 60, 84):
            for v in find_voices(gm, gm.presets[0, program], key, 100):
                points, loop, _ = sample_region(gm, v)
                if loop: ratios.append(seam_ratio(points, playback_step(v, key, SR), loop, SR // 2))
    assert len(ratios) > 30 and max(ratios) <= 1.001


def test_sample_mode_3_plays_to_the_end_after_release_and_mode_0_stops(sine_sf):
    held = SR // 4
    for mode in (3, 0):
        v = one_voice(sine_sf, sampleModes=mode, releaseVolEnv=tc(4.0))
        y = render_voice(sine_sf, v, 69, 127, held, SR)
        if mode == 0:
            assert abs(len(y) - SR) <= 2                                   # the sample's own length (1 s)
        else:  # released at 0.25 s inside the loop [4000, 44000): plays on to the sample's end, < 1 s later
            assert held < len(y) <= held + SR


@settings(max_examples=60, deadline=None)
@given(n_points=st.integers(8, 400), loop0=st.integers(0, 200), length=st.integers(2, 200),
       step=st.floats(0.05, 9.0), n=st.integers(1, 3000), n_looped=st.one_of(st.none(), st.integers(0, 3000)))
def test_read_positions_stay_inside_the_sample(n_points, loop0, length, step, n, n_looped):
    points = np.random.default_rng(n_points).uniform(-1, 1, n_points).astype(np.float32)
    loop = (loop0, loop0 + length) if loop0 + length <= n_points else None
    y = read_sample(points, step, n, loop, n_looped)
    assert np.isfinite(y).all() and np.abs(y).max(initial=0) <= 1
    if loop is not None and n_looped is None: assert len(y) == n        # a looped voice never runs out


# ---------------------------------------------------------------- envelope, velocity, attenuation
def test_volume_envelope_levels_and_times_as_the_generators_say(sine_sf):
    v = one_voice(sine_sf, delayVolEnv=tc(0.05), attackVolEnv=tc(0.1), holdVolEnv=tc(0.2), decayVolEnv=tc(1.0),
                  sustainVolEnv=300, releaseVolEnv=tc(0.5))
    y = render_voice(sine_sf, v, 69, 127, SR, SR)
    assert abs(len(y) / SR - 1.35) < 2 / SR                     # released at -30 dB: 70 dB more at 100 dB per 0.5 s
    expected = {0.03: None, 0.1: -6.02, 0.25: 0.0, 0.5: -15.0, 0.7: -30.0, 0.9: -30.0, 1.1: -50.0, 1.3: -90.0}
    for t, db in expected.items():
        if db is None: assert np.abs(y[int(0.02 * SR):int(0.045 * SR)]).max() == 0   # the delay is silent
        else: assert abs(level_db(y, t) - db) < 0.3, (t, level_db(y, t), db)


def test_envelope_key_scaling_and_level_closed_form():
    gens = dict(delayVolEnv=-12000, attackVolEnv=tc(0.01), holdVolEnv=tc(0.1), decayVolEnv=tc(2.0), sustainVolEnv=1000,
                releaseVolEnv=tc(0.2), keynumToVolEnvHold=100, keynumToVolEnvDecay=-50)
    low, high = VolumeEnvelope.of(gens, 48), VolumeEnvelope.of(gens, 72)
    assert math.isclose(low.hold / high.hold, 2 ** (24 * 100 / 1200))    # 100 timecents per key below 60
    assert math.isclose(high.decay / low.decay, 2 ** (24 * 50 / 1200))
    env = low.render(SR, SR)
    for t in (0.005, 0.05, 0.3, 0.9):
        assert math.isclose(env[round(t * SR)], low.level(round(t * SR) / SR), rel_tol=1e-4, abs_tol=1e-6)


def test_velocity_follows_the_spec_default_modulator(sine_sf, tmp_path):
    assert velocity_attenuation(127) == 0 and velocity_attenuation(0) == 960
    for v in (1, 30, 64, 100):
        assert math.isclose(10 ** (-velocity_attenuation(v) / 200), (v / 127) ** 2)   # 400 log10(127/v) cB
    loud = level_db(play_note(sine_sf, sine_sf.presets[0, 0], 69, 127, SR // 2, SR), 0.25)
    for v in (100, 64, 16):
        soft = level_db(play_note(sine_sf, sine_sf.presets[0, 0], 69, v, SR // 2, SR), 0.25)
        assert abs(soft - loud - 40 * math.log10(v / 127)) < 0.02
    quiet = SoundFont(write_sf2(tmp_path / "q.sf2", [dict(ZONE, initialAttenuation=120)]))
    assert abs(level_db(play_note(quiet, quiet.presets[0, 0], 69, 127, SR // 2, SR), 0.25) - loud + 12.0) < 0.02


def test_velocity_and_key_zones_pick_their_samples(tmp_path):
    octave = 0.5 * np.sin(2 * np.pi * 880 * np.arange(44000) / 44000)
    sf = SoundFont(write_sf2(tmp_path / "z.sf2", [dict(ZONE, velRange=(0, 63)), dict(ZONE, sample=octave, velRange=(64, 127))]))
    assert [round(fundamental(play_note(sf, sf.presets[0, 0], 69, v, SR, SR)[:SR])) for v in (10, 63, 64, 127)] == [440, 440, 880, 880]


# ---------------------------------------------------------------- drums, stems, presets
def test_drum_kit_keys_and_exclusive_class(gm):
    kit = gm.presets[128, 0]
    names = {k: find_voices(gm, kit, k, 100)[0].sample.name for k in (36, 38, 42, 46)}
    assert len(set(names.values())) == 4                       # each key its own instrument
    both = render_notes(gm, kit, [Note(0.0, 0.5, 46, 100), Note(0.5, 0.1, 42, 100)], SR, SR)
    closed = render_notes(gm, kit, [Note(0.5, 0.1, 42, 100)], SR, SR)
    opened = render_notes(gm, kit, [Note(0.0, 0.5, 46, 100)], SR, SR)
    after = slice(int(0.506 * SR), int(0.7 * SR))
    np.testing.assert_allclose(both[after], closed[after], atol=1e-6)   # the closed hat cut the open one
    assert np.abs(opened[after]).max() > 1e-2


def test_stem_is_the_sum_of_its_notes_and_fast(gm):
    import time
    notes = [Note(0.25 * k, 0.2 + 0.05 * (k % 3), 40 + (k * 7) % 24, 60 + (k * 13) % 60) for k in range(40)]
    stem = render_notes(gm, gm.presets[0, 33], notes, SR)
    ref = np.zeros(len(stem), np.float32)
    for n in notes:
        y = play_note(gm, gm.presets[0, 33], n.pitch, n.velocity, round(n.dur * SR), SR)
        ref[round(n.start * SR):round(n.start * SR) + len(y)] += y
    np.testing.assert_allclose(stem, ref, atol=1e-6)
    t0 = time.perf_counter(); render_notes(gm, gm.presets[0, 0], notes, SR); dt = time.perf_counter() - t0
    assert 10.0 / dt > 20, f"{10.0 / dt:.0f}x real time"       # bench/soundfont.py measures it properly


def test_missing_program_falls_back_and_says_so(sine_sf, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="msg_edu.soundfont"):
        preset, note = find_preset(sine_sf, 33)
    assert preset is sine_sf.presets[0, 0] and "no preset for program 33 (Electric Bass (finger))" in note
    assert note in caplog.text
    kit = SoundFont(write_sf2(tmp_path / "k.sf2", [ZONE], bank=128, program=16))
    preset, note = find_preset(kit, 0, is_drum=True)
    assert preset is kit.presets[128, 16] and "drum kit 0 (Standard Kit)" in note
    assert find_preset(sine_sf, 0, is_drum=True)[0] is None       # no kit at all: silent, and said
    assert find_preset(load_soundfont(), 33) == (load_soundfont().presets[0, 33], None)


# ---------------------------------------------------------------- bad input
def test_truncated_soundfont_fails_with_a_clear_message(tmp_path):
    data = default_sf2().read_bytes()
    for cut in (100, len(data) // 3, len(data) - 10):
        (tmp_path / "t.sf2").write_bytes(data[:cut])
        with pytest.raises(SoundFontError, match="truncated"): SoundFont(tmp_path / "t.sf2")


def test_not_a_soundfont_fails_with_a_clear_message(tmp_path):
    for content in (b"", b"RIFF\x10\x00\x00\x00WAVEfmt ", b"MThd\x00\x00\x00\x06", b"hello"):
        (tmp_path / "x.sf2").write_bytes(content)
        with pytest.raises(SoundFontError, match="is not a SoundFont"): SoundFont(tmp_path / "x.sf2")
    with pytest.raises(FileNotFoundError, match="does not exist"): SoundFont(tmp_path / "none.sf2")


def test_damaged_tables_fail_with_a_clear_message(tmp_path):
    good = write_sf2(tmp_path / "s.sf2", [ZONE]).read_bytes()
    bad = bytearray(good); at = bad.rfind(b"shdr")
    struct.pack_into("<I", bad, at + 32, 10 ** 8)            # the first sample's end, far past the sample data
    (tmp_path / "b.sf2").write_bytes(bytes(bad))
    with pytest.raises(SoundFontError, match="sample 'sample0' spans"): SoundFont(tmp_path / "b.sf2")
    bad = bytearray(good); at = bad.rfind(b"igen")
    struct.pack_into("<HH", bad, at + 8 + 4, 53, 9)          # the zone's sampleID points to sample 9 of 1
    (tmp_path / "c.sf2").write_bytes(bytes(bad))
    with pytest.raises(SoundFontError, match="sampleID 9 of 1"): SoundFont(tmp_path / "c.sf2")
    bad = bytearray(good); at = bad.rfind(b"pdta")
    bad[at + 4:at + 8] = b"phdX"                              # the preset table renamed away
    (tmp_path / "d.sf2").write_bytes(bytes(bad))
    with pytest.raises(SoundFontError, match="lacks the SF2 chunks"): SoundFont(tmp_path / "d.sf2")


def test_the_reader_loads_without_the_player_and_old_paths_still_work():
    import importlib, subprocess, sys
    code = "import sys, msg_edu.soundfont; print('msg_edu.soundfont_player' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    import msg_edu.soundfont as old
    new = importlib.import_module("msg_edu.soundfont_player")
    assert set(old._MOVED) == set(new.__all__)
    for name, module in old._MOVED.items(): assert getattr(old, name) is getattr(new, name), name
    from msg_edu.soundfont import render_notes as old_render   # the old `from` form
    assert old_render is render_notes
    with pytest.raises(AttributeError, match="no attribute 'nope'"): old.nope
