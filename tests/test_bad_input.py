"""Issue 23: what a new user can do wrong with `msg-edu` (and the functions behind it), and how each answers.

Every case goes through `msg_edu.cli.main` in-process, as the console script does, and checks the contract: a user error
is exit status 2 with ONE line on stderr that names the file or flag; Ctrl-C is 130 with one line; a bug is 1 with one
line; odd-but-valid input is 0. Python users get the same messages as `MsgEduError`s. Classes (the issue's):
tracebacks (damaged model folders, Ctrl-C, bugs), zero is not "not given", lost work, messages that point the wrong
way, scale; then the inputs the project already handled, so that none regresses.
"""
import contextlib
import io
import json
import math
import pickle
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

import msg_edu.cli as cli
import msg_edu.msgld as msgld
from msg_edu.audio import save_audio
from msg_edu.core import MsgEduError, Progress
from msg_edu.samplers import DiffusionConfig
from msg_edu.latent import by_segments
from msg_edu.learner import Learner, has_checkpoint
from msg_edu.mgeldm import MGELDM, MGE_DIFFUSION, add_stem_file, extract_file
from msg_edu.triplets import TripletConfig, TripletDenoiser
from msg_edu.msgld import MSGLD, generate_files, separate_file
from msg_edu.unet import MultiTrackUNet, UNetConfig
from msg_edu.vae import AutoencoderKL, VAEConfig

SR = 16000


def run(*argv) -> tuple[int, str]:
    "Status and stderr of `msg-edu argv`, in-process."
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main([str(a) for a in argv])
    return status, err.getvalue()


def user_error(status: int, err: str, *says: str) -> None:
    "The contract of a user error: status 2, one line, no traceback, naming what it must name."
    assert status == 2, (status, err)
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    for s in says: assert s in err, (s, err)


def tone(seconds=1.5, sr=SR, f=440.0, channels=1):
    t = torch.arange(int(seconds * sr)) / sr
    return torch.stack([0.3 * torch.sin(2 * math.pi * f * (c + 1) * t) for c in range(channels)])


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    "Audio files a user might give, good and bad."
    d = tmp_path_factory.mktemp("inputs")
    save_audio(d / "song.wav", tone(), SR)
    (d / "other").mkdir(); save_audio(d / "other" / "song.wav", tone(f=330.0), SR)
    save_audio(d / "stereo44k.wav", tone(sr=44100, channels=2), 44100)
    sf.write(d / "int16_8k.wav", (tone(sr=8000)[0].numpy() * 20000).astype(np.int16), 8000, subtype="PCM_16")
    long = torch.cat([tone(1.3), torch.zeros(1, 3 * SR), tone(1.3)], -1)    # sound, 3 s of silence, sound
    save_audio(d / "gappy.wav", long, SR)
    save_audio(d / "silent.wav", torch.zeros(1, SR), SR)
    save_audio(d / "short.wav", tone(0.1), SR)
    nan = tone().numpy().T.copy(); nan[100] = np.nan
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    (d / "text.wav").write_text("not audio at all")
    (d / "empty.wav").write_bytes(b"")
    save_audio(d / "song.flac", tone(), SR)
    (d / "truncated.wav").write_bytes((d / "song.wav").read_bytes()[:30])
    return d


@pytest.fixture(scope="module")
def msgld_dir(tmp_path_factory):
    "An untrained tiny MSG-LD model folder (what `train msgld` leaves in OUT/model), 2 sampling steps."
    torch.manual_seed(0)
    pipe = MSGLD(AutoencoderKL(VAEConfig.preset("tiny")), MultiTrackUNet(UNetConfig.preset("tiny")),
                 DiffusionConfig.preset("tiny", steps=2), segment_seconds=1.28)
    return pipe.save_pretrained(tmp_path_factory.mktemp("models") / "msgld")


@pytest.fixture(scope="module")
def mgeldm_dir(tmp_path_factory):
    torch.manual_seed(0)
    pipe = MGELDM(AutoencoderKL(VAEConfig.preset("tiny")), TripletDenoiser(TripletConfig.preset("tiny")),
                  DiffusionConfig(**MGE_DIFFUSION, steps=2), segment_seconds=1.28)
    return pipe.save_pretrained(tmp_path_factory.mktemp("models") / "mgeldm")


@pytest.fixture(scope="module")
def pipe(msgld_dir):
    return MSGLD.from_pretrained(msgld_dir)


def copy_model(src, tmp_path):
    return shutil.copytree(src, tmp_path / "model")


# ------------------------------------------------------------------------------------------------ 1. tracebacks
def _json_edit(rel, fn):
    def damage(d):
        p = d / rel
        p.write_text(fn(json.loads(p.read_text())))
    return damage

def _truncate(rel, keep=0.5):
    def damage(d):
        p = d / rel
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])
    return damage

def _nan_weights(rel):
    def damage(d):
        from safetensors.torch import load_file, save_file
        p = d / rel
        w = load_file(str(p)); k = next(k for k, v in w.items() if v.is_floating_point())
        w[k] = w[k].clone(); w[k].view(-1)[0] = float("nan")
        save_file(w, str(p))
    return damage

def _replace(rel, text):
    def damage(d): (d / rel).write_text(text)
    return damage

def _remove(rel):
    def damage(d): shutil.rmtree(d / rel)
    return damage

DAMAGED_MSGLD = {   # what was done to a model folder -> what the one line must say
    "unet weights half-copied": (_truncate("unet/model.safetensors"), "unet/model.safetensors is damaged or incomplete"),
    "vae weights empty": (_truncate("vae/model.safetensors", 0), "vae/model.safetensors is damaged or incomplete"),
    "vae weights a text file": (_replace("vae/model.safetensors", "hello"), "vae/model.safetensors is damaged"),
    "unet weights hold NaN": (_nan_weights("unet/model.safetensors"), "unet/model.safetensors holds NaN or Inf"),
    "vae weights hold NaN": (_nan_weights("vae/model.safetensors"), "vae/model.safetensors holds NaN or Inf"),
    "msgld.json not JSON": (_replace("msgld.json", "stems: [bass]"), "msgld.json is not valid JSON"),
    "msgld.json half-copied": (_truncate("msgld.json"), "msgld.json is not valid JSON"),
    "msgld.json an array": (_replace("msgld.json", "[1, 2]"), "msgld.json holds an array, not a JSON object"),
    "msgld.json without stems": (_json_edit("msgld.json", lambda m: json.dumps({k: v for k, v in m.items() if k != "stems"})),
                                 "msgld.json lacks the key 'stems'"),
    "msgld.json without format": (_json_edit("msgld.json", lambda m: json.dumps({k: v for k, v in m.items() if k != "format"})),
                                  "msgld.json lacks the key 'format'"),
    "msgld.json diffusion a string": (_json_edit("msgld.json", lambda m: json.dumps({**m, "diffusion": "dpm"})),
                                      "'diffusion' must be an object"),
    "msgld.json unknown diffusion field": (_json_edit("msgld.json", lambda m: json.dumps({**m, "diffusion": {**m["diffusion"], "x": 1}})),
                                           "msgld.json does not fit the models beside it"),
    "msgld.json unknown stem": (_json_edit("msgld.json", lambda m: json.dumps({**m, "stems": ["bass", "drums", "guitar", "kazoo"]})),
                                "msgld.json does not fit the models beside it"),
    "msgld.json negative segment": (_json_edit("msgld.json", lambda m: json.dumps({**m, "segment_seconds": -1})), "segment_seconds"),
    "msgld.json other format": (_json_edit("msgld.json", lambda m: json.dumps({**m, "format": "msg_edu.msgld/99"})), "msgld/99"),
    "unet config.json not JSON": (_replace("unet/config.json", "{"), "unet/config.json is not valid JSON"),
    "unet config.json an object without config": (_json_edit("unet/config.json", lambda m: json.dumps({k: v for k, v in m.items() if k != "config"})),
                                                  "unet/config.json lacks the key 'config'"),
    "unet config.json a bad value": (_json_edit("unet/config.json", lambda m: json.dumps({**m, "config": {**m["config"], "model_channels": -4}})),
                                     "unet/config.json: its config does not build"),
    "unet config.json a string": (_replace("unet/config.json", '"unet"'), "unet/config.json holds a string"),
    "vae folder missing": (_remove("vae"), "no config.json in"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_MSGLD))
def test_damaged_msgld_folder_is_named(case, msgld_dir, files, tmp_path):
    damage, says = DAMAGED_MSGLD[case]
    model = copy_model(msgld_dir, tmp_path); damage(model)
    user_error(*run("separate", files / "song.wav", "--model", model, "--out", tmp_path / "out"), says)
    with pytest.raises(MsgEduError if case != "vae folder missing" else FileNotFoundError, match=None):
        MSGLD.from_pretrained(model)                                              # Python: the same, as an exception


DAMAGED_MGELDM = {
    "mgeldm.json not JSON": (_replace("mgeldm.json", "nope"), "mgeldm.json is not valid JSON"),
    "mgeldm.json without diffusion": (_json_edit("mgeldm.json", lambda m: json.dumps({k: v for k, v in m.items() if k != "diffusion"})),
                                      "mgeldm.json lacks the key 'diffusion'"),
    "denoiser weights half-copied": (_truncate("model/model.safetensors"), "model/model.safetensors is damaged or incomplete"),
    "denoiser weights hold NaN": (_nan_weights("model/model.safetensors"), "model/model.safetensors holds NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_MGELDM))
def test_damaged_mgeldm_folder_is_named(case, mgeldm_dir, files, tmp_path):
    damage, says = DAMAGED_MGELDM[case]
    model = copy_model(mgeldm_dir, tmp_path); damage(model)
    user_error(*run("extract", files / "song.wav", "--label", "bass", "--model", model, "--out", tmp_path / "out"), says)
    with pytest.raises(MsgEduError): MGELDM.from_pretrained(model)


def test_ctrl_c_is_one_line_and_130(monkeypatch, msgld_dir, files, tmp_path):
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(msgld, "separate_file", interrupted)
    status, err = run("separate", files / "song.wav", "--model", msgld_dir, "--out", tmp_path / "out")
    assert status == 130 and err.strip().count("\n") == 0 and "interrupted (Ctrl-C)" in err, err


def test_a_bug_is_one_line_and_1(monkeypatch, msgld_dir, files, tmp_path):
    def buggy(*a, **k): return {}["notes"]
    monkeypatch.setattr(msgld, "separate_file", buggy)
    status, err = run("separate", files / "song.wav", "--model", msgld_dir, "--out", tmp_path / "out")
    assert status == 1 and err.strip().count("\n") == 0 and "bug in msg_edu" in err and "KeyError" in err, err
    monkeypatch.setenv("MSG_EDU_TRACEBACK", "1")
    with pytest.raises(KeyError): cli.main(["separate", str(files / "song.wav"), "--model", str(msgld_dir), "--out", str(tmp_path)])


def ctrl_c_at(monkeypatch, step: int):
    "Make every Learner raise KeyboardInterrupt (a Ctrl-C) before update `step`; returns the real `_one_step` to restore."
    real = Learner._one_step
    def one_step(self, micro):
        if self.step == step: raise KeyboardInterrupt
        return real(self, micro)
    monkeypatch.setattr(Learner, "_one_step", one_step)
    return real


def test_ctrl_c_in_training_keeps_a_checkpoint_and_resume_continues(toy, cache, monkeypatch, tmp_path):
    "Ctrl-C after 2 of 4 updates of `train vae`: 130, a checkpoint at 2, `--resume` finishes; then two wrong resumes."
    out = tmp_path / "vae"
    argv = ["train", "vae", "--preset", "tiny", "--data", toy, "--out", out, "--steps", "4", "--cache", cache]
    real = ctrl_c_at(monkeypatch, 2)
    status, err = run(*argv)
    assert status == 130 and "--resume" in err and err.strip().count("\n") == 0, err
    assert has_checkpoint(out) and (out / "checkpoints" / "step_00000002").is_dir()
    user_error(*run(*argv), "already holds a training run", "--resume")                 # not over it without --resume
    monkeypatch.setattr(Learner, "_one_step", real)
    status, err = run(*argv, "--resume")
    assert status == 0, err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    # CLI words, not Python's: a resume with other settings names the flags, not strict=False
    status, err = run(*argv[:-4], "--steps", "6", "--cache", cache, "--resume")
    user_error(status, err, "--steps"); assert "strict=False" not in err
    # a damaged newest checkpoint is named
    newest = max((out / "checkpoints").iterdir())
    (newest / "state.pt").write_bytes(b"broken")
    user_error(*run(*argv, "--resume"), "state.pt is damaged")


def test_ctrl_c_in_the_vae_stage_of_msgld_resumes(toy, cache, monkeypatch, tmp_path):
    "`train msgld` trains its VAE first: a Ctrl-C there leaves out/vae/checkpoints, and --resume goes on from them."
    out = tmp_path / "msgld"
    argv = ["train", "msgld", "--preset", "tiny", "--data", toy, "--out", out, "--steps", "2", "--cache", cache]
    real = ctrl_c_at(monkeypatch, 2)
    status, err = run(*argv)
    assert status == 130 and "--resume" in err, err
    assert has_checkpoint(out / "vae") and not (out / "vae" / "model.safetensors").exists()
    monkeypatch.setattr(Learner, "_one_step", real)
    status, err = run(*argv, "--resume")
    assert status == 0, err
    assert (out / "model" / "msgld.json").is_file() and json.loads((out / "metrics.json").read_text())["steps"] == 2


# ------------------------------------------------------------------------------------------------ 2. zero is not "not given"
BAD_FLAGS = [   # (command line without the common part, the flag the line must name)
    (["generate", "--steps", "0"], "--steps"), (["generate", "--steps", "-3"], "--steps"), (["generate", "--steps", "2.5"], "--steps"),
    (["generate", "--seconds", "0"], "--seconds"), (["generate", "--seconds", "-1"], "--seconds"),
    (["generate", "--seconds", "nan"], "--seconds"), (["generate", "--seconds", "inf"], "--seconds"),
    (["generate", "--seconds", "0.1"], "--seconds"), (["generate", "--w", "nan"], "--w"), (["generate", "--w", "inf"], "--w"),
    (["generate", "--n", "0"], "--n"), (["generate", "--seed", "-1"], "--seed"), (["generate", "--seed", "x"], "--seed"),
    (["separate", "in.wav", "--segment", "0"], "--segment"), (["separate", "in.wav", "--segment", "0.1"], "--segment"),
    (["separate", "in.wav", "--segment", "nan"], "--segment"), (["separate", "in.wav", "--batch", "0"], "--batch"),
    (["separate", "in.wav", "--sampler", "euler"], "--sampler"), (["extract", "in.wav", "--label", "bass", "--steps", "0"], "--steps"),
    (["add-stem", "--label", "bass", "--seconds", "0"], "--seconds"),
]


@pytest.mark.parametrize("argv,flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_sampling_flags_are_checked_for_what_they_mean(argv, flag, tmp_path):
    status, err = run(*argv, "--model", tmp_path / "m", "--out", tmp_path / "o")
    user_error(status, err, f"argument {flag}:", "--help")
    assert not (tmp_path / "o").exists()                                              # refused before any work


OTHER_FLAGS = [
    (["train", "vae", "--data", "d", "--out", "o", "--steps", "0"], "--steps"),
    (["train", "msgld", "--data", "d", "--out", "o", "--seed", "-2"], "--seed"),
    (["toy-slakh", "--out", "o", "--tracks", "0"], "--tracks"), (["toy-slakh", "--out", "o", "--seconds", "0"], "--seconds"),
    (["toy-slakh", "--out", "o", "--sr", "0"], "--sr"), (["toy-slakh", "--out", "o", "--jobs", "0"], "--jobs"),
    (["render-midi", "--midi", "m", "--out", "o", "--jobs", "0"], "--jobs"),
    (["render-midi", "--midi", "m", "--out", "o", "--max-seconds", "0"], "--max-seconds"),
    (["render-midi", "--midi", "m", "--out", "o", "--limit", "0"], "--limit"),
    (["eval", "--task", "separation", "--pred", "p", "--ref", "r", "--sr", "0"], "--sr"),
    (["demo", "--seed", "-1"], "--seed"),
]


@pytest.mark.parametrize("argv,flag", OTHER_FLAGS, ids=[" ".join(a) for a, _ in OTHER_FLAGS])
def test_other_flags_are_checked_for_what_they_mean(argv, flag):
    user_error(*run(*argv), f"argument {flag}:")


def test_zero_is_an_error_in_python_too(pipe, files, tmp_path):
    for call, name in [(lambda: separate_file(pipe, files / "song.wav", tmp_path, steps=0), "`steps` must be >= 1"),
                       (lambda: separate_file(pipe, files / "song.wav", tmp_path, segment_seconds=0.1), "`segment_seconds`"),
                       (lambda: separate_file(pipe, files / "song.wav", tmp_path, guidance_w=float("nan")), "`guidance_w`"),
                       (lambda: generate_files(pipe, tmp_path, seconds=0), "`seconds` must be a finite number >= 0.25"),
                       (lambda: pipe.generate(1, seconds=0), "`seconds`"),
                       (lambda: pipe.diffusion.sample(pipe.unet, torch.zeros(1, 4, 8, 8, 16), steps=0), "`steps`")]:
        with pytest.raises(MsgEduError, match=name): call()
    assert not any(tmp_path.iterdir())                                                 # nothing written


def test_steps_1_is_not_the_default(pipe, files, tmp_path):
    "Was: `steps or default` made --steps 0 give the default's output; now each count is what it says."
    one = separate_file(pipe, files / "song.wav", tmp_path / "a", steps=1)
    two = separate_file(pipe, files / "song.wav", tmp_path / "b", steps=2)
    a, b = (sf.read(r["files"][0])[0] for r in (one, two))
    assert not np.array_equal(a, b)


def test_generate_seconds_is_the_length_asked_for(msgld_dir, tmp_path):
    status, err = run("generate", "--model", msgld_dir, "--out", tmp_path, "--seconds", "0.5", "--steps", "1")
    assert status == 0, err
    assert sf.info(tmp_path / "gen_000" / "mix.wav").frames == 8000


# ------------------------------------------------------------------------------------------------ 3. lost work
def test_two_inputs_with_one_name_are_refused_before_any_work(msgld_dir, files, tmp_path):
    user_error(*run("separate", files / "song.wav", files / "other" / "song.wav", "--model", msgld_dir, "--out", tmp_path / "o"),
               "would both be written", "song")
    assert not (tmp_path / "o").exists()


def test_same_stem_different_suffix_collides_too(msgld_dir, files, tmp_path):
    user_error(*run("separate", files / "song.wav", files / "song.flac", "--model", msgld_dir, "--out", tmp_path / "o"),
               "would both be written")


def _fake_run(folder, subdirs):
    "A run folder as a training command leaves it: checkpoints in `subdirs` ('.' = itself) and metrics.json."
    for s in subdirs: (folder / s / "checkpoints" / "step_00000002").mkdir(parents=True)
    (folder / "metrics.json").write_text('{"precious": true}')
    return folder


@pytest.mark.parametrize("kind,subdirs,command", [
    ("msgld run", ("vae", "unet_run"), "vae"), ("msgld run", ("vae", "unet_run"), "msgld"),
    ("mgeldm run", ("vae", "model_run"), "vae"), ("vae run", (".",), "msgld"), ("vae run", (".",), "mgeldm"),
    ("msgld run stopped in its vae stage", ("vae",), "vae"), ("msgld run stopped in its vae stage", ("vae",), "msgld")])
def test_training_refuses_an_out_with_any_run(kind, subdirs, command, toy, tmp_path):
    out = _fake_run(tmp_path / "run", subdirs)
    user_error(*run("train", command, "--preset", "tiny", "--data", toy, "--out", out), "already holds a training run")
    assert json.loads((out / "metrics.json").read_text()) == {"precious": True}


@pytest.mark.parametrize("subdirs,command,says", [((), "vae", "holds no checkpoint"), ((".",), "msgld", "a run of another kind"),
                                                  (("vae", "unet_run"), "vae", "a run of another kind")])
def test_resume_needs_a_run_of_its_kind(subdirs, command, says, toy, tmp_path):
    out = _fake_run(tmp_path / "run", subdirs) if subdirs else tmp_path / "run"
    user_error(*run("train", command, "--preset", "tiny", "--data", toy, "--out", out, "--resume"), says)


@pytest.mark.parametrize("command", ["separate", "generate", "extract"])
def test_out_is_checked_before_the_model_is_loaded(command, files, tmp_path):
    (tmp_path / "afile").write_text("x")
    argv = {"separate": ["separate", files / "song.wav"], "generate": ["generate"],
            "extract": ["extract", files / "song.wav", "--label", "bass"]}[command]
    user_error(*run(*argv, "--model", tmp_path / "nowhere", "--out", tmp_path / "afile"), "output folder", "is a file")


def test_out_under_a_file_is_refused(msgld_dir, files, tmp_path):
    (tmp_path / "afile").write_text("x")
    user_error(*run("separate", files / "song.wav", "--model", msgld_dir, "--out", tmp_path / "afile" / "sub"), "cannot be made")


# ------------------------------------------------------------------------------------------------ 4. messages that point the right way
def test_short_segment_blames_the_segment_not_the_mixture(pipe, files, tmp_path):
    with pytest.raises(MsgEduError) as e: separate_file(pipe, files / "song.wav", tmp_path, segment_seconds=0.2)
    assert "segment_seconds" in str(e.value) and "mixture" not in str(e.value)


def test_nan_weights_are_named_at_load_not_in_the_sampler(msgld_dir, tmp_path):
    model = copy_model(msgld_dir, tmp_path); _nan_weights("unet/model.safetensors")(model)
    with pytest.raises(MsgEduError) as e: MSGLD.from_pretrained(model)
    assert "nan_to_num" not in str(e.value) and "unet/model.safetensors" in str(e.value)


def test_flat_dataset_gets_cli_advice(tmp_path, toy):
    flat = tmp_path / "flat"
    shutil.copytree(next((toy / "train").iterdir()), flat / "Track00001")
    status, err = run("train", "vae", "--preset", "tiny", "--data", flat, "--out", tmp_path / "o")
    user_error(status, err, "--data", "train/"); assert "split=None" not in err


# ------------------------------------------------------------------------------------------------ 5. scale
@pytest.mark.parametrize("batch", [1, 3, 8, 100])
def test_by_segments_runs_in_batches_and_rejoins_exactly(batch):
    wave, seen = torch.randn(2050), []
    wave[400:800] = 0                                                   # two silent segments of 200
    def fn(segs): seen.append(len(segs)); return torch.cat([segs, -segs], 1)
    parts, n_silent, n_segs = by_segments(wave, 200, fn, 2, batch=batch)
    assert (n_silent, n_segs) == (2, 11) and max(seen) <= batch and sum(seen) == 9
    assert torch.equal(parts[0], wave) and torch.equal(parts[1], -wave)


def test_progress_off_a_terminal_is_plain_lines():
    log = io.StringIO()
    with Progress(5, "separating x.wav", unit="segment", interval=0, file=log) as p:
        for _ in range(5): p.update()
    lines = log.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in log.getvalue() and "ETA" in lines[0] and "5/5 segments" in lines[-1]
    quiet = io.StringIO()
    with Progress(5, "x", file=quiet) as p:                             # a short job: nothing (interval 30 s)
        for _ in range(5): p.update()
    assert quiet.getvalue() == ""


def test_separate_in_small_batches_from_the_cli(msgld_dir, files, tmp_path):
    status, err = run("separate", files / "gappy.wav", "--model", msgld_dir, "--out", tmp_path, "--batch", "1", "--steps", "1")
    assert status == 0, err
    assert sf.info(tmp_path / "gappy" / "bass.wav").frames == sf.info(files / "gappy.wav").frames


# ------------------------------------------------------------------------------------------------ 6. inputs already handled well
BAD_AUDIO = {"missing.wav": "does not exist", "other": "is a folder", "text.wav": "cannot be read as audio",
             "empty.wav": "cannot be read as audio", "truncated.wav": "cannot be read as audio", "silent.wav": "silent",
             "short.wav": "at least 0.25 s", "nan.wav": "NaN"}


@pytest.mark.parametrize("name", sorted(BAD_AUDIO))
def test_bad_audio_is_named(name, msgld_dir, files, tmp_path):
    user_error(*run("separate", files / name, "--model", msgld_dir, "--out", tmp_path / "o"), BAD_AUDIO[name])


@pytest.mark.parametrize("name,note", [("stereo44k.wav", "averaged"), ("int16_8k.wav", "resampled"), ("gappy.wav", "silent and left silent"),
                                       ("song.flac", None)])
def test_odd_but_valid_audio_is_separated(name, note, msgld_dir, files, tmp_path, capsys):
    status = cli.main(["separate", str(files / name), "--model", str(msgld_dir), "--out", str(tmp_path), "--steps", "1"])
    out = capsys.readouterr().out
    assert status == 0 and (tmp_path / name.split(".")[0] / "mix.wav").is_file()
    if note: assert note in out, out


@pytest.mark.parametrize("what,says", [("nowhere", "does not exist"), ("vae", "class AutoencoderKL"), ("mgeldm", "MGE-LDM"),
                                       ("empty", "no pipeline description")])
def test_wrong_model_folders_are_named(what, says, msgld_dir, mgeldm_dir, files, tmp_path):
    model = {"nowhere": tmp_path / "nowhere", "vae": msgld_dir / "vae", "mgeldm": mgeldm_dir, "empty": tmp_path}[what]
    user_error(*run("separate", files / "song.wav", "--model", model, "--out", tmp_path / "o"), says)


def test_msgld_folder_given_to_extract(msgld_dir, files, tmp_path):
    user_error(*run("extract", files / "song.wav", "--label", "bass", "--model", msgld_dir, "--out", tmp_path / "o"), "MSG-LD")


def test_unknown_label_before_any_work(mgeldm_dir, files, tmp_path):
    user_error(*run("extract", files / "song.wav", "--label", "kazooo", "--model", mgeldm_dir, "--out", tmp_path / "o"), "kazooo")


def test_cuda_on_a_cpu_machine(msgld_dir, files, tmp_path):
    if torch.cuda.is_available(): pytest.skip("a GPU is here")
    user_error(*run("separate", files / "song.wav", "--model", msgld_dir, "--out", tmp_path / "o", "--device", "cuda"), "CUDA")


class _Boom:
    "A pickle that would create a file when unpickled with weights_only=False."
    def __init__(self, path): self.path = path
    def __reduce__(self): return (open, (str(self.path), "w"))


def test_a_crafted_pickle_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "boom": _Boom(marker)}, tmp_path / "evil.pt")
    user_error(*run("import", "msgld", "--unet", tmp_path / "evil.pt", "--out", tmp_path / "o"), "evil.pt", "weights_only")
    assert not marker.exists()


def test_a_crafted_yaml_is_never_run(tmp_path, toy):
    marker = tmp_path / "pwned"
    data = tmp_path / "data"
    shutil.copytree(toy, data)
    for meta in data.glob("*/Track*/metadata.yaml"):
        meta.write_text(f"audio_dir: stems\nstems: !!python/object/apply:os.system ['touch {marker}']\n")
    status, err = run("train", "vae", "--preset", "tiny", "--data", data, "--out", tmp_path / "o", "--steps", "1")
    assert status == 2 and not marker.exists(), err


def test_python_damaged_pipeline_is_a_valueerror_too(msgld_dir, tmp_path):
    "MsgEduError is a ValueError: code that caught ValueError before keeps working."
    model = copy_model(msgld_dir, tmp_path); _replace("msgld.json", "{")(model)
    with pytest.raises(ValueError, match="msgld.json"): MSGLD.from_pretrained(model)


def test_add_stem_to_a_bad_submix(mgeldm_dir, files, tmp_path):
    user_error(*run("add-stem", "--label", "bass", "--submix", files / "text.wav", "--model", mgeldm_dir, "--out", tmp_path / "o"),
               "cannot be read as audio")
    status, err = run("add-stem", "--label", "bass", "--model", mgeldm_dir, "--out", tmp_path / "ok", "--seconds", "0.5", "--steps", "1")
    assert status == 0, err


def test_python_add_stem_and_extract_check_first(tmp_path, mgeldm_dir, files):
    pipe = MGELDM.from_pretrained(mgeldm_dir)
    with pytest.raises(MsgEduError, match="`seconds`"): add_stem_file(pipe, tmp_path, "bass", seconds=0)
    with pytest.raises(MsgEduError, match="`steps`"): extract_file(pipe, files / "song.wav", tmp_path, "bass", steps=0)
    assert not any(tmp_path.iterdir())
