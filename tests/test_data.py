"""Slakh2100 reader, ToySlakh, the cache and the datasets: real-data quirks, musical alignment, bad input."""
import collections
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from msg_edu.data import AudioCache, DataError, SlakhIndex, canonical_class, is_silent, read_slakh_track
from msg_edu.datasets import StemsDataset, TripletDataset
from msg_edu.slakh_format import read_midi
from msg_edu.toyslakh import ToySlakhConfig, make_toy_slakh

TINY = ToySlakhConfig.preset("tiny").to_dict()


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


# ---------------------------------------------------------------- ToySlakh through the real reader
def test_toyslakh_reads_back_through_the_slakh_reader(toy, cache_dir):
    counts = {}
    for split in ("train", "validation", "test", "omitted"):
        index = SlakhIndex(toy, split, stems="all", cache_dir=cache_dir)
        counts[split] = len(index)
        for t in index.tracks:
            assert t.layout == "slakh" and t.sr == TINY["sr"] and t.n_samples == int(TINY["seconds"] * TINY["sr"])
            assert t.missing_keys == [] and len(t.UUID) == 32 and t.target_peak == -1.0
            for s in t.stems.values():
                assert (s.path is not None) == s.audio_rendered
                assert s.integrated_loudness is None or -60 < s.integrated_loudness < 0
    assert counts == {"train": 4, "validation": 1, "test": 1, "omitted": 1}


def test_stems_sum_to_the_written_mix(toy):
    for track_dir in sorted((toy / "train").iterdir()):
        t = read_slakh_track(track_dir)
        stems = sum(sf.read(s.path, dtype="float64")[0] for s in t.stems.values() if s.audio_rendered)
        mix = sf.read(t.mix_path, dtype="float64")[0]
        n_files = 1 + sum(s.audio_rendered for s in t.stems.values())
        assert np.abs(stems - mix).max() <= n_files * 2.0**-16  # each 16-bit file rounds by at most half an LSB


def _onsets(x: np.ndarray, sr: int) -> np.ndarray:
    "Onset times (1 ms resolution): peaks of the energy ratio between the next and the previous 25 ms, above 10 dB."
    hop, lag = sr // 1000, 25
    c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])[::hop]   # energy up to each millisecond
    before, after = c[lag:-lag] - c[:-2 * lag], c[2 * lag:] - c[lag:-lag]
    ratio = 10 * np.log10((after + 1e-9) / (before + 1e-9))
    loud = after > 1e-4 * after.max()
    idx = np.flatnonzero((ratio > 10) & loud)
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []
    return np.array([(run[np.argmax(ratio[run])] + lag) / 1000 for run in runs])


def test_drums_and_bass_onsets_sit_on_the_beat_grid(toy, cache_dir):
    index = SlakhIndex(toy, "train", stems=("drums", "bass"), cache_dir=cache_dir)
    for t in index.tracks:
        tempo, notes = read_midi(t.path / "all_src.mid")
        eighth = 60 / tempo / 2
        for c in ("Drums", "Bass"):
            on = _onsets(index.load(t, c), 16000)
            assert len(on) >= 4, (t.name, c)
            # a sampled instrument's attack delays every detected onset by about the same time: that lag is not off the
            # grid, so the grid is checked after removing the stem's median lag (at most 30 ms)
            lag = (on / eighth - np.round(on / eighth)) * eighth
            off_grid = np.abs(lag - np.median(lag))
            assert abs(np.median(lag)) < 0.03 and off_grid.max() < 0.02 and off_grid.mean() < 0.008, (t.name, c, lag)


def test_toyslakh_is_deterministic_and_resumable(tmp_path):
    a = make_toy_slakh(tmp_path / "a", **TINY, n_jobs=1)
    b = make_toy_slakh(tmp_path / "b", **TINY, n_jobs=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    shutil.rmtree(a / "train" / "Track00002")  # an interrupted run: one track never landed
    manifest = json.loads((a / "toyslakh.json").read_text()); manifest["complete"] = False
    (a / "toyslakh.json").write_text(json.dumps(manifest))
    before = (a / "train" / "Track00001" / "mix.flac").stat().st_mtime_ns
    make_toy_slakh(a, **TINY)
    assert (a / "train" / "Track00002" / "mix.flac").read_bytes() == (b / "train" / "Track00002" / "mix.flac").read_bytes()
    assert (a / "train" / "Track00001" / "mix.flac").stat().st_mtime_ns == before  # finished tracks were kept
    assert json.loads((a / "toyslakh.json").read_text())["complete"] is True
    with pytest.raises(FileExistsError, match="holds a different ToySlakh"): make_toy_slakh(a, **{**TINY, "seed": 3})


FAMILY_OF_CLASS = {"Piano": 0, "Organ": 2, "Guitar": 3, "Bass": 4, "Strings": 5, "Strings (continued)": 6, "Synth Lead": 10,
                   "Sound effects": 15}   # General MIDI family (program // 8) of each ToySlakh class


def test_toyslakh_v3_plays_programs_drawn_within_families_and_records_them(toy):
    from msg_edu.toyslakh import GENERATOR_VERSION, PROGRAM_CHOICES
    manifest = json.loads((toy / "toyslakh.json").read_text())
    assert manifest["generator"] == GENERATOR_VERSION == 3 and manifest["synth"] == "sf2"
    assert manifest["soundfont"].startswith("TimGM6mb.sf2, ")
    drawn = collections.defaultdict(set)
    for d in sorted(toy.glob("*/Track*")):
        meta = yaml.safe_load((d / "metadata.yaml").read_text())
        for key, s in meta["stems"].items():
            program = s["program_num"]
            assert {n["program"] for n in read_midi(d / "MIDI" / f"{key}.mid")[1]} == {program}   # the MIDI says the same
            if s["is_drum"]: assert program in PROGRAM_CHOICES["drums"] and s["inst_class"] == "Drums"
            else: assert program // 8 == FAMILY_OF_CLASS[s["inst_class"]], (d.name, key, s)
            assert s["plugin_name"].startswith("TimGM6mb.sf2: ") and s["midi_program_name"]
            drawn[s["inst_class"]].add(program)
    assert len(drawn["Bass"]) > 1 or len(drawn["Drums"]) > 1        # programs vary from track to track


def test_toyslakh_oscillators_stay_an_option(tmp_path):
    from msg_edu.toyslakh import INSTRUMENTS
    root = make_toy_slakh(tmp_path / "osc", **{**TINY, "n_tracks": 3, "n_omitted": 0, "synth": "osc"})
    meta = yaml.safe_load((root / "train" / "Track00001" / "metadata.yaml").read_text())
    assert {(s["program_num"], s["plugin_name"]) for s in meta["stems"].values()} <= {
        (i.program_num, i.plugin_name) for i in INSTRUMENTS.values()}                       # v2's fixed instruments
    assert json.loads((root / "toyslakh.json").read_text())["synth"] == "osc"
    with pytest.raises(ValueError, match="sf2 .* needs synth='sf2'"):
        make_toy_slakh(tmp_path / "x", **{**TINY, "synth": "osc", "sf2": "font.sf2"})


def test_babyslakh_layout_wav_16k(tmp_path, cache_dir):
    root = make_toy_slakh(tmp_path / "baby", **{**TINY, "fmt": "wav"})
    index = SlakhIndex(root, "train", stems="all", cache_dir=cache_dir)
    assert all(s.path.suffix == ".wav" for t in index.tracks for s in t.stems.values() if s.path)
    assert len(StemsDataset(index, 1.0)) > 0


# ---------------------------------------------------------------- hand-written fixtures: real-data quirks
SR = 16000


def _tone(freq, seconds, amp=0.1, sr=SR):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def _write_track(folder: Path, stems: dict, mix=True, drop_fields=(), rates=None):
    "stems: key -> (inst_class, audio or None for audio_rendered: false)."
    (folder / "stems").mkdir(parents=True)
    meta = {"UUID": "0" * 32, "audio_dir": "stems", "midi_dir": "MIDI", "lmd_midi_dir": "x.mid", "normalization_factor": -13.0,
            "normalized": True, "overall_gain": 1.0, "target_peak": -1.0, "stems": {}}
    for key, (cls, audio) in stems.items():
        meta["stems"][key] = {"audio_rendered": audio is not None, "inst_class": cls, "is_drum": cls == "Drums",
                              "integrated_loudness": -20.0, "midi_program_name": "x", "midi_saved": True,
                              "plugin_name": "x.nkm", "program_num": 0}
        if audio is not None: sf.write(folder / "stems" / f"{key}.flac", audio, (rates or {}).get(key, SR))
    if mix:
        n = max(len(a) for _, a in stems.values() if a is not None)
        sf.write(folder / "mix.flac", sum(np.pad(a, (0, n - len(a))) for _, a in stems.values() if a is not None), SR)
    for f in drop_fields: del meta[f]
    (folder / "metadata.yaml").write_text(yaml.safe_dump(meta))


@pytest.fixture
def quirky(tmp_path):
    root = tmp_path / "slakh"
    t = root / "train"
    _write_track(t / "Track00001", {"S00": ("Piano", _tone(220, 3)), "S01": ("Piano", _tone(330, 3)),  # two pianos
                                    "S02": ("Bass", _tone(55, 3)), "S03": ("Drums", _tone(100, 3)),
                                    "S04": ("Guitar", _tone(440, 2)),                                  # shorter stem
                                    "S05": ("Strings", _tone(500, 3)), "S06": ("Strings (continued)", _tone(600, 3)),
                                    "S07": ("Sound effects", None)})                                   # not rendered
    _write_track(t / "Track00002", {"S00": ("Piano", _tone(262, 3)), "S01": ("Bass", _tone(65, 3)),
                                    "S02": ("Drums", _tone(90, 3))})                                   # no guitar
    _write_track(root / "omitted" / "Track00003", {"S00": ("Bass", _tone(70, 3))})
    return root


def test_quirks_classes_aliases_unrendered_unequal(quirky, cache_dir):
    t = read_slakh_track(quirky / "train" / "Track00001")
    assert t.classes == ["Bass", "Drums", "Guitar", "Piano", "Strings"]       # alias merged, sound effects unrendered
    assert t.stems["S06"].raw_class == "Strings (continued)" and t.stems["S07"].path is None
    assert t.n_samples == 3 * SR                                               # the longest file
    index = SlakhIndex(quirky, "train", stems="all", cache_dir=cache_dir)
    track = index.tracks[0]
    np.testing.assert_allclose(index.load(track, "Piano"), _tone(220, 3) + _tone(330, 3), atol=1e-4)  # summed
    np.testing.assert_allclose(index.load(track, "Strings"), _tone(500, 3) + _tone(600, 3), atol=1e-4)
    guitar = index.load(track, "Guitar")
    assert len(guitar) == 3 * SR and not guitar[2 * SR:].any()                # zero-padded to the track
    assert (index.load(track, "Organ") == 0).all()                            # a class the track lacks: silence


def test_missing_stem_policies_are_counted(quirky, cache_dir):
    drop = SlakhIndex(quirky, "train", cache_dir=cache_dir)
    assert [t.name for t in drop.tracks] == ["Track00001"]
    assert drop.counts["dropped (missing a requested stem)"] == 1
    zero = SlakhIndex(quirky, "train", missing="zero", cache_dir=cache_dir)
    assert len(zero) == 2 and zero.counts["zero-filled (missing a requested stem)"] == 1
    item = StemsDataset(zero, 1.0)[-1]
    assert item["track"] == "Track00002" and (item["stems"][zero.classes.index("Guitar")] == 0).all()
    omitted = SlakhIndex(quirky, "omitted", stems=("bass",), cache_dir=cache_dir)
    assert [t.name for t in omitted.tracks] == ["Track00003"] and omitted.tracks[0].split == "omitted"


def test_msdm_layout(tmp_path, cache_dir):
    track = tmp_path / "msdm" / "test" / "Track00001"; track.mkdir(parents=True)
    for name, f in [("bass", 55), ("drums", 80), ("piano", 262)]:
        sf.write(track / f"{name}.wav", _tone(f, 2, sr=22050), 22050)
    t = read_slakh_track(track)
    assert t.layout == "msdm" and t.classes == ["Bass", "Drums", "Piano"] and t.sr == 22050
    index = SlakhIndex(tmp_path / "msdm", "test", stems=("bass", "drums", "piano"), cache_dir=cache_dir)
    assert index.length(index.tracks[0]) == round(2 * 22050 * 16000 / 22050)


# ---------------------------------------------------------------- the cache
def test_cache_decodes_each_file_once_and_invalidates(tmp_path):
    f = tmp_path / "a.flac"
    sf.write(f, _tone(440, 1.0, sr=44100), 44100)
    cache = AudioCache(tmp_path / "cache", sr=16000)
    first = np.array(cache.load(f))
    for _ in range(3): cache.segment(f, 100, 1000)
    assert (cache.misses, cache.hits) == (1, 3) and len(first) == 16000
    assert not list((tmp_path / "cache").glob("*.tmp*"))                       # atomic: no temp file left
    sf.write(f, _tone(880, 1.0, sr=44100), 44100)                                        # the source changed
    assert not np.allclose(cache.load(f), first) and cache.misses == 2
    other_rate = AudioCache(tmp_path / "cache", sr=22050)
    assert len(other_rate.load(f)) == 22050 and other_rate.misses == 1
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    np.testing.assert_array_equal(cache.segment(f, 15900, 300)[100:], 0)      # past the end: zeros


# ---------------------------------------------------------------- datasets
def test_stems_dataset_mix_shift_and_silence(toy, cache_dir, tmp_path):
    index = SlakhIndex(toy, "train", cache_dir=cache_dir)
    ds = StemsDataset(index, segment_seconds=1.0, hop_seconds=0.5)
    item = ds[0]
    assert item["stems"].shape == (4, 16000) and item["mix"].shape == (1, 16000)
    assert torch.equal(item["mix"], item["stems"].sum(0, keepdim=True).clamp(-1, 1))
    shifted = StemsDataset(index, 1.0, random_shift=True)
    torch.manual_seed(0); a = [shifted[i]["start"] for i in range(len(shifted))]
    torch.manual_seed(0); b = [shifted[i]["start"] for i in range(len(shifted))]
    assert a == b and any(s % 16000 for s in a)                              # reproducible, and off the hop grid
    assert all(0 <= s <= index.length(index.tracks[0]) - 16000 for s in a)
    # a track that is silent for its second half: those segments are skipped and counted
    root = tmp_path / "quiet"
    audio = np.concatenate([_tone(100, 2), np.zeros(2 * SR, np.float32)])
    _write_track(root / "train" / "Track00001", {"S00": ("Bass", audio), "S01": ("Drums", audio)})
    quiet = StemsDataset(SlakhIndex(root, "train", stems=("bass", "drums"), cache_dir=cache_dir), 1.0)
    assert len(quiet) == 2 and quiet.counts["silent segments skipped"] == 2


def test_triplets_are_additive_and_labelled(toy, cache_dir):
    index = SlakhIndex(toy, "train", stems="all", cache_dir=cache_dir)
    ds = TripletDataset(index, segment_seconds=1.0)
    assert ds.labels == sorted(index.classes)
    torch.manual_seed(0)
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        torch.testing.assert_close(item["submix"] + item["source"], item["mix"], rtol=0, atol=1e-6)
        stems = ds.stems[ds.items[i][0]]["stems"]
        assert torch.equal(item["mix"], stems.sum(0, keepdim=True))             # MGE-LDM's mix: the unclipped sum
        assert ds.labels[item["label_id"]] == item["label"] and not is_silent(item["source"]).item()
        seen.add(item["label"])
    assert len(seen) >= 3                                                      # sources are drawn among many classes
    every = TripletDataset(index, 1.0, mode="all")
    assert len(every) == sum(len(p) for p in every.present) > len(every.stems)
    with pytest.raises(ValueError, match="not in `labels`"): TripletDataset(index, 1.0, labels=["Bass"])


# ---------------------------------------------------------------- bad input
def test_bad_tracks_are_skipped_and_counted(quirky, cache_dir, caplog):
    t = quirky / "train"
    (t / "Track00001" / "metadata.yaml").write_text("stems: [broken")                         # malformed YAML
    _write_track(t / "Track00004", {"S00": ("Bass", _tone(60, 2))}); (t / "Track00004" / "stems" / "S00.flac").unlink()
    _write_track(t / "Track00005", {"S00": ("Bass", _tone(60, 2))}); (t / "Track00005" / "stems" / "S00.flac").write_bytes(b"junk" * 50)
    _write_track(t / "Track00006", {"S00": ("Bass", _tone(60, 2)), "S01": ("Drums", _tone(90, 2))}, mix=False, rates={"S01": 22050})
    (t / "Track00007").mkdir()                                                                # no metadata at all
    index = SlakhIndex(quirky, "train", stems="all", cache_dir=cache_dir)
    assert [x.name for x in index.tracks] == ["Track00002"]
    assert index.counts["skipped (unreadable)"] == 5 and len(index.errors) == 5
    assert "skipping a track" in caplog.text
    with pytest.raises(DataError, match="is not valid YAML"): read_slakh_track(t / "Track00001")
    with pytest.raises(DataError, match=r"S00.flac \(or .wav\) is missing"): read_slakh_track(t / "Track00004")
    with pytest.raises(DataError, match="is not readable audio"): read_slakh_track(t / "Track00005")
    with pytest.raises(DataError, match="different sample rates"): read_slakh_track(t / "Track00006")
    with pytest.raises(DataError, match="no metadata.yaml"): read_slakh_track(t / "Track00007")


def test_bad_requests_are_errors(quirky, cache_dir, tmp_path):
    with pytest.raises(DataError, match="are in no readable track"): SlakhIndex(quirky, "train", stems=("bass", "brass"), cache_dir=cache_dir)
    (quirky / "validation").mkdir()
    with pytest.raises(DataError, match="an empty split"): SlakhIndex(quirky, "validation", cache_dir=cache_dir)
    with pytest.raises(DataError, match="has no test/ folder"): SlakhIndex(quirky, "test", cache_dir=cache_dir)
    with pytest.raises(DataError, match="does not exist"): SlakhIndex(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="unknown instrument class 'kazoo'"): SlakhIndex(quirky, "train", stems=("kazoo",), cache_dir=cache_dir)
    with pytest.raises(ValueError, match="missing must be"): SlakhIndex(quirky, "train", missing="pad", cache_dir=cache_dir)
    broken = tmp_path / "broken"; shutil.copytree(quirky / "omitted", broken / "train")
    (broken / "train" / "Track00003" / "metadata.yaml").write_text("a: 1")
    with pytest.raises(DataError, match="no usable track"): SlakhIndex(broken, "train", stems="all", cache_dir=cache_dir)
    index = SlakhIndex(quirky, "train", stems="all", cache_dir=cache_dir)
    with pytest.raises(DataError, match="has no segment"): StemsDataset(index, segment_seconds=30)
    assert canonical_class("SYNTH PAD") == "Synth Pad"


def test_slakh_format_loads_alone_and_old_toyslakh_paths_still_work():
    import subprocess, sys
    import msg_edu.slakh_format as new, msg_edu.toyslakh as old
    code = ("import sys, msg_edu.slakh_format; print(sorted(m for m in ('msg_edu.toyslakh', 'msg_edu.soundfont', 'msg_edu.data') "
            "if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    assert len(new.__all__) == 7
    for name in new.__all__: assert getattr(old, name) is getattr(new, name), name


def test_datasets_live_in_their_own_module_and_designs_data_paths_still_work():
    import importlib, subprocess, sys
    code = "import sys, msg_edu.data; print('msg_edu.datasets' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    import msg_edu.data as old
    new = importlib.import_module("msg_edu.datasets")
    assert set(old._MOVED) == set(new.__all__) - {"Latents"} == {"StemsDataset", "TripletDataset", "SingleStems"}   # (Latents: added after the move)
    for name in old._MOVED: assert getattr(old, name) is getattr(new, name), name
    from msg_edu.data import StemsDataset as old_stems, TripletDataset as old_triplets   # DESIGN.md's paths
    assert (old_stems, old_triplets) == (new.StemsDataset, new.TripletDataset)
    with pytest.raises(AttributeError, match="no attribute 'nope'"): old.nope
