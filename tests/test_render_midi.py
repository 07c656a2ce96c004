"""`render_midi_dataset` / `msg-edu render-midi`: Slakh's layout and classes from MIDI files, splits, workers, resumption,
bad MIDI files and bad SoundFonts."""
import dataclasses
import json

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
import yaml

import msg_edu.slakh_format as slakh_format
from msg_edu.cli import main
from msg_edu.data import canonical_class, read_slakh_track
from msg_edu.render_midi import (MidiError, read_midi_stems, render_midi_dataset, render_midi_file, slakh_class,
                                 split_of)
from msg_edu.slakh_format import write_midi
from msg_edu.toyslakh import INSTRUMENTS, draw_programs, plan_track


def write_song(path, seed: int, index: int, seconds: float = 3.0) -> None:
    "A ToySlakh score as a MIDI file (drums on channel 10, programs drawn within their families)."
    plan, programs = plan_track(seed, index, seconds), draw_programs(seed, index)
    write_midi(path, [(dataclasses.replace(INSTRUMENTS[i], program_num=programs[i]), n) for i, n in plan.stems.items()], plan.tempo)


@pytest.fixture
def midi_dir(tmp_path):
    d = tmp_path / "midi"
    (d / "sub").mkdir(parents=True)
    for k in range(3): write_song(d / f"song{k}.mid", 5, k)
    write_song(d / "sub" / "nested.MIDI", 5, 3)
    (d / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x05\x01\xe0MTrk\x00\x00\x00\x40\x90")
    write_midi(d / "empty.mid", [], 100.0)
    (d / "notes.txt").write_text("not a MIDI file, and not named like one: ignored")
    return d


def test_slakh_classes_from_general_midi_families():
    names = {slakh_class(p) for p in range(128)} | {slakh_class(0, True)}
    assert len(names) == 17 and all(canonical_class(n) for n in names)      # Slakh's 17 values, all readable
    assert [slakh_class(p) for p in (7, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120)] == [
        "Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Strings (continued)", "Brass", "Reed",
        "Pipe", "Synth Lead", "Synth Pad", "Sound Effects", "Ethnic", "Percussive", "Sound effects"]
    assert slakh_class(33, is_drum=True) == "Drums"


def test_midi_stems_programs_drums_and_channel_gain(tmp_path):
    pm = pretty_midi.PrettyMIDI()
    bass, kit = pretty_midi.Instrument(program=34, name="bass"), pretty_midi.Instrument(program=0, is_drum=True, name="kit")
    bass.control_changes += [pretty_midi.ControlChange(7, 64, 0.0), pretty_midi.ControlChange(7, 10, 1.0)]  # the later one: ignored
    bass.notes += [pretty_midi.Note(100, 40, 0.5, 1.0), pretty_midi.Note(90, 43, 1.0, 1.5)]
    kit.notes += [pretty_midi.Note(110, 36, 0.0, 0.1)]
    pm.instruments += [bass, kit, pretty_midi.Instrument(program=0, name="no notes")]
    pm.write(str(tmp_path / "a.mid"))
    stems = read_midi_stems(tmp_path / "a.mid")
    assert [(s.program, s.is_drum, s.name, len(s.notes)) for s in stems] == [(34, False, "bass", 2), (0, True, "kit", 1)]
    assert np.isclose(stems[0].gain, (64 / 127) ** 2) and np.isclose(stems[1].gain, (100 / 127) ** 2)
    track, notes = render_midi_file(tmp_path / "a.mid", sr=22050)
    assert [(s.info.inst_class, s.info.midi_program_name) for s in track] == [("Bass", "Electric Bass (pick)"), ("Drums", "Standard Kit")]
    assert len({len(s.audio) for s in track}) == 1 and notes == []          # stems padded to one length


def test_bad_midi_files_raise_midi_error(midi_dir, tmp_path):
    with pytest.raises(MidiError, match="is not a readable MIDI file"): read_midi_stems(midi_dir / "corrupt.mid")
    with pytest.raises(MidiError, match="has no notes"): render_midi_file(midi_dir / "empty.mid")
    with pytest.raises(MidiError, match="more than max_seconds=2"): render_midi_file(midi_dir / "song0.mid", max_seconds=2)


def test_splits_are_a_hash_of_the_name():
    names = [f"{k:05d}.mid" for k in range(10000)]
    shares = [np.mean([split_of(n) == s for n in names]) for s in ("train", "validation", "test")]
    assert np.allclose(shares, [0.7, 0.15, 0.15], atol=0.015)
    assert [split_of(n) for n in names[:50]] == [split_of(n) for n in names[:50]]


def test_render_midi_dataset_with_workers_resumes_and_reports(midi_dir, tmp_path):
    out = tmp_path / "out"
    r = render_midi_dataset(midi_dir, out, sr=16000, n_jobs=2, progress=False)
    assert (r["files"], r["rendered"], r["reused"]) == (6, 4, 0)
    assert sorted(r["skipped"]) == ["corrupt.mid", "empty.mid"] and "has no notes" in r["skipped"]["empty.mid"]
    manifest = json.loads((out / "render_midi.json").read_text())
    assert manifest["complete"] and manifest["skipped"] == r["skipped"] and len(manifest["tracks"]) == 6
    assert manifest["tracks"]["sub/nested.MIDI"].startswith(split_of("sub/nested.MIDI") + "/Track")
    tracks = [read_slakh_track(d) for d in sorted(out.glob("*/Track*"))]
    assert len(tracks) == 4 and sum(r["splits"].values()) == 4
    for t in tracks:
        meta = yaml.safe_load((t.path / "metadata.yaml").read_text())
        assert t.sr == 16000 and meta["lmd_midi_dir"].endswith((".mid", ".MIDI")) and meta["normalized"] is False
        assert (t.path / "all_src.mid").read_bytes() == (midi_dir / meta["lmd_midi_dir"]).read_bytes()
        source = read_midi_stems(t.path / "all_src.mid")
        assert [s.raw_class for s in t.stems.values()] == [slakh_class(s.program, s.is_drum) for s in source]
        stems = sum(sf.read(s.path, dtype="float64")[0] for s in t.stems.values() if s.audio_rendered)
        mix = sf.read(t.mix_path, dtype="float64")[0]
        assert np.abs(stems - mix).max() <= (1 + len(t.stems)) * 2.0 ** -16     # stems sum to the mix (16-bit files)
        assert abs(np.abs(mix).max() - 10 ** (-1 / 20)) < 1e-3                  # the mix peaks at -1 dBFS
    before = {p: p.stat().st_mtime_ns for p in out.rglob("mix.flac")}
    again = render_midi_dataset(midi_dir, out, sr=16000, n_jobs=2, progress=False)
    assert (again["rendered"], again["reused"]) == (0, 4)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("mix.flac")}
    with pytest.raises(FileExistsError, match="holds a rendering with"): render_midi_dataset(midi_dir, out, sr=22050)


def test_an_interrupted_track_never_looks_complete(midi_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = {"n": 0}
    real_save = slakh_format.save_audio
    def failing_save(*a, **k):  # the machine dies while the second track writes its stems
        calls["n"] += 1
        if calls["n"] == 7: raise KeyboardInterrupt
        return real_save(*a, **k)
    monkeypatch.setattr(slakh_format, "save_audio", failing_save)
    with pytest.raises(KeyboardInterrupt): render_midi_dataset(midi_dir, out, sr=16000, n_jobs=1, progress=False)
    done = sorted(out.glob("*/Track*"))
    assert all((d / "metadata.yaml").is_file() for d in done) and not list(out.glob("*/.Track*"))
    assert json.loads((out / "render_midi.json").read_text())["complete"] is False
    monkeypatch.setattr(slakh_format, "save_audio", real_save)
    (out / "train" / ".Track00009.debris").mkdir(parents=True, exist_ok=True)   # a killed process's leftovers
    r = render_midi_dataset(midi_dir, out, sr=16000, n_jobs=1, progress=False)
    assert r["rendered"] + r["reused"] == 4 and r["reused"] == len(done) and not list(out.glob("*/.Track*"))


def test_not_a_soundfont_fails_before_any_work(midi_dir, tmp_path):
    (tmp_path / "font.sf2").write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(ValueError, match="is not a SoundFont"):
        render_midi_dataset(midi_dir, tmp_path / "out", sf2=tmp_path / "font.sf2")
    assert not (tmp_path / "out").exists()


def test_cli_render_midi(midi_dir, tmp_path, capsys):
    out = tmp_path / "lakh"
    assert main(["render-midi", "--midi", str(midi_dir), "--out", str(out), "--sr", "16000", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "6 MIDI files" in printed and "4 rendered" in printed and "2 skipped" in printed
    assert "skipped corrupt.mid: corrupt.mid is not a readable MIDI file" in printed and "skipped empty.mid" in printed
    assert len(list(out.glob("*/Track*/metadata.yaml"))) == 4
    assert main(["render-midi", "--midi", str(midi_dir), "--out", str(out), "--sr", "16000"]) == 0
    assert "4 already there" in capsys.readouterr().out
    assert main(["render-midi", "--midi", str(midi_dir), "--out", str(tmp_path / "x"), "--sf2", str(midi_dir / "song0.mid")]) == 2
    assert "is not a SoundFont" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["render-midi", "--midi", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
