"""The Learner's promises: exact resume, crash-safe checkpoints, the NaN guard, accumulation, clipping,
the LR schedule, EMA, phases (GANs), logs, bad input, and DistributedDataParallel on 2 CPU processes."""
import json
import math
import os
import pickle
import random
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

import msg_edu.checkpoint
import msg_edu.learner as L
from msg_edu.core import seed_everything
from msg_edu.learner import (EMA, CancelFit, Callback, GradClip, Learner, NonFiniteLossError, Phase, TrainConfig,
                             find_checkpoint, lr_factor, make_loader, plot_history, read_checkpoint, read_log)

ROOT = Path(__file__).resolve().parents[1]


class NoisyFrames(Dataset):
    "Rows of a fixed tensor plus fresh noise from the global torch RNG: an augmentation a resume must replay."
    def __init__(self, n=300, dim=12):
        self.x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i] + 0.05 * torch.randn(self.x.shape[1])


def l1(model, x): return (model(x) - x).abs().mean()


def make_learner(loader="global", steps=40, out=None, **kw):
    "A small autoencoder with dropout, a shuffling loader, warmup + cosine, clipping, EMA, accumulation, validation."
    seed_everything(0)
    ds = NoisyFrames()
    model = nn.Sequential(nn.Linear(12, 16), nn.SiLU(), nn.Dropout(0.2), nn.Linear(16, 4), nn.Linear(4, 12))
    if loader == "global": dl = DataLoader(ds, batch_size=32, shuffle=True)  # order drawn from the global RNG
    elif loader == "generator": dl = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(3))
    elif loader == "workers": dl = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2)  # noise drawn in the workers
    else: dl = make_loader(ds, 32, seed=5)
    settings = dict(lr=1e-2, steps=steps, warmup=min(5, steps), weight_decay=0.01, grad_clip=0.5, ema_decay=0.9, accumulate=2,
                    log_every=3, valid_every=7, progress=False)
    return Learner(model, dl, l1, DataLoader(ds, batch_size=100), out=out, **{**settings, **kw})


def weights_of(learn):
    out = {f"model.{k}": v.clone() for k, v in learn.model.state_dict().items()}
    if learn.ema is not None: out.update({f"ema.{k}": v.clone() for k, v in learn.ema.module.state_dict().items()})
    for name, opt in learn.opts.items():
        for i, st in opt.state_dict()["state"].items():
            out.update({f"opt.{name}.{i}.{k}": v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)})
    return out


def assert_bitwise(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"not bitwise equal: {different}"


def scramble():
    "A new process would start from other random states: make sure nothing relies on the old ones."
    torch.manual_seed(987); random.seed(654); np.random.seed(321)


@pytest.mark.parametrize("loader", ["global", "generator", "make_loader"])
def test_resume_is_bitwise_exact(tmp_path, loader):
    straight = make_learner(loader, out=tmp_path / "a").fit()
    stopped = make_learner(loader, out=tmp_path / "b").fit(until=17)  # 17 updates x 2 micro-batches: mid-epoch (9/epoch)
    assert stopped.step == 17 and stopped.batch_idx not in (0, 9)
    del stopped
    scramble()
    resumed = make_learner(loader, out=tmp_path / "b").load(tmp_path / "b")
    assert resumed.step == 17
    resumed.fit()
    assert_bitwise(weights_of(straight), weights_of(resumed))
    assert straight.history == resumed.history  # the log too, including the validation rows
    assert read_log(tmp_path / "a/log.csv") == read_log(tmp_path / "b/log.csv")


def test_resume_is_exact_with_worker_processes(tmp_path):
    straight = make_learner("workers", steps=12).fit()
    make_learner("workers", steps=12, out=tmp_path).fit(until=7)  # mid-epoch: batch 5 of 9 in the second epoch
    scramble()
    resumed = make_learner("workers", steps=12).load(tmp_path).fit()
    assert_bitwise(weights_of(straight), weights_of(resumed))


def test_resume_after_a_kill_from_the_periodic_checkpoint(tmp_path):
    class Killed(BaseException): "A kill -9 as the run sees it: nothing after it runs (unlike Ctrl-C, which saves first)."
    class Kill(Callback):
        def after_step(self, learn):
            if learn.step == 26: raise Killed  # killed between checkpoints (saved at 10 and 20)

    straight = make_learner(steps=40).fit()
    with pytest.raises(Killed):
        make_learner(steps=40, out=tmp_path, save_every=10, cbs=[Kill()]).fit()
    assert find_checkpoint(tmp_path).name == "step_00000020"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000010", "step_00000020"]
    logged = read_log(tmp_path / "log.csv")
    assert max(r["step"] for r in logged) >= 24  # the killed run logged past its checkpoint...
    scramble()
    resumed = make_learner(steps=40, out=tmp_path, save_every=10).load(tmp_path).fit()
    assert_bitwise(weights_of(straight), weights_of(resumed))
    steps = [r["step"] for r in read_log(tmp_path / "log.csv") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # ...but the resumed log holds each step once
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000030", "step_00000040"]  # keep=2


def test_ctrl_c_saves_a_checkpoint_and_the_resume_is_exact(tmp_path):
    class CtrlC(Callback):
        def after_step(self, learn):
            if learn.step == 26: raise KeyboardInterrupt

    straight = make_learner(steps=40).fit()
    with pytest.raises(KeyboardInterrupt):
        make_learner(steps=40, out=tmp_path, save_every=10, cbs=[CtrlC()]).fit()
    assert find_checkpoint(tmp_path).name == "step_00000026"   # the updates up to the Ctrl-C are kept
    scramble()
    resumed = make_learner(steps=40, out=tmp_path, save_every=10).load(tmp_path)
    assert resumed.step == 26
    assert_bitwise(weights_of(straight), weights_of(resumed.fit()))


def test_fit_in_pieces_equals_one_fit():
    whole = make_learner().fit()
    pieces = make_learner()
    for until in (5, 6, 23, 40): pieces.fit(until=until)
    assert_bitwise(weights_of(whole), weights_of(pieces))
    assert whole.history == pieces.history


def test_validation_never_changes_the_training_run():
    often = make_learner(valid_every=1).fit()
    never = make_learner(valid_every=0)
    never.valid_dl = None
    never.fit()
    assert_bitwise(weights_of(often), weights_of(never))
    assert sum("valid_loss" in r for r in often.history) == 40 and not any("valid_loss" in r for r in never.history)


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    learn = make_learner(steps=10, out=tmp_path).fit(until=5)
    good = weights_of(learn)

    def dies_half_way(tensors, filename, metadata=None):
        from safetensors.torch import save
        data = save(tensors, metadata=metadata)
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(msg_edu.checkpoint, "_save_safetensors", dies_half_way)  # what checkpoints write weights with
    with pytest.raises(OSError, match="No space left"): learn.fit(until=7)  # the save at the stop dies half-way
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000005"]  # no half-written folder

    real_save = torch.save
    def state_dies(obj, f, *a, **k):
        real_save(obj, f, *a, **k); f.truncate(100); raise OSError("killed")
    monkeypatch.setattr(L.torch, "save", state_dies)
    with pytest.raises(OSError, match="killed"): learn.save(tmp_path / "checkpoints/step_00000005")  # re-save a step
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000005"]

    # a process killed mid-save (no cleanup at all) leaves only a hidden temporary folder
    leftover = tmp_path / "checkpoints/.step_00000009.abc.tmp"
    leftover.mkdir(); (leftover / "weights.safetensors").write_bytes(b"\x00" * 10)
    assert find_checkpoint(tmp_path).name == "step_00000005"
    back = make_learner(steps=10).load(tmp_path)
    assert back.step == 5
    assert_bitwise(good, weights_of(back))
    back.out = tmp_path; back.fit()
    assert not leftover.exists()  # the next save cleans it up


@pytest.mark.parametrize("name", ["weights.safetensors", "state.pt"])
def test_truncated_checkpoint_fails_clearly(tmp_path, name):
    make_learner(steps=4, out=tmp_path).fit()
    f = tmp_path / "checkpoints/step_00000004" / name
    for cut in (len(f.read_bytes()) // 2, len(f.read_bytes()) - 3):
        data = f.read_bytes()
        f.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="damaged|truncated"):
            make_learner(steps=4).load(tmp_path)
        f.write_bytes(data)
    make_learner(steps=4).load(tmp_path)  # intact again
    f.unlink()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        make_learner(steps=4).load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        make_learner(steps=4).load(tmp_path / "nothing")


class Evil:
    def __reduce__(self): return (os.system, ("echo pwned > /dev/null",))


def test_checkpoints_load_without_unpickling_code(tmp_path):
    make_learner(steps=2, out=tmp_path).fit()
    ckpt = tmp_path / "checkpoints/step_00000002"
    weights, state = read_checkpoint(ckpt)  # plain data only
    assert all(isinstance(v, torch.Tensor) for v in weights.values()) and state["step"] == 2
    assert any(k.startswith("cb.EMA.module.") for k in weights)  # the EMA's weights live in safetensors
    state["evil"] = Evil()
    with open(ckpt / "state.pt", "wb") as f: torch.save(state, f, pickle_module=pickle)
    with pytest.raises(ValueError, match="holds more than plain data"):
        read_checkpoint(ckpt)


def test_checkpoint_from_another_setup_names_the_mismatch(tmp_path):
    make_learner(steps=4, out=tmp_path).fit()
    with pytest.raises(ValueError, match=r"training config differs in lr \(checkpoint 0.01, now 0.02\)"):
        make_learner(steps=4, lr=0.02).load(tmp_path)
    with pytest.raises(ValueError, match=r"training config differs in accumulate .*; steps"):
        make_learner(steps=5, accumulate=1).load(tmp_path)
    make_learner(steps=4, log_every=1, save_every=2).load(tmp_path)  # logging settings may change
    assert make_learner(steps=8, lr=0.02).load(tmp_path, strict=False).step == 4  # train longer, knowingly

    seed_everything(0)
    wider = nn.Sequential(nn.Linear(12, 32), nn.SiLU(), nn.Dropout(0.2), nn.Linear(32, 4), nn.Linear(4, 12))
    learn = Learner(wider, [torch.zeros(2, 12)], l1, progress=False)
    with pytest.raises(ValueError, match=r"weights of another shape .*'0.weight \(16, 12\) vs \(32, 12\)'") as e:
        learn.load(tmp_path, strict=False)
    assert "Build the Learner with the model" in str(e.value)
    with pytest.raises(ValueError, match=r"phases: checkpoint \['main'\], now \['a', 'b'\]"):
        Learner(nn.ModuleDict({"a": nn.Linear(12, 12), "b": nn.Linear(12, 12)}), [torch.zeros(2, 12)],
                {"a": lambda m, x: m.a(x).mean(), "b": lambda m, x: m.b(x).mean()}, progress=False).load(tmp_path, strict=False)


def test_model_config_mismatch_names_keys(tmp_path):
    from msg_edu.mel import MelConfig

    class Net(nn.Linear):
        def __init__(self, cfg):
            super().__init__(cfg.n_mels, 1); self.config = cfg
    data = [torch.zeros(2, 64)]
    Learner(Net(MelConfig()), data, lambda m, x: m(x).pow(2).mean(), steps=1, out=tmp_path, progress=False).fit()
    with pytest.raises(ValueError, match=r"model config differs in fmax \(checkpoint 8000.0, now 7000.0\)"):
        Learner(Net(MelConfig(fmax=7000.0)), data, lambda m, x: m(x).pow(2).mean(), steps=1, progress=False).load(tmp_path)


def test_non_finite_loss_stops_at_the_step_and_batch(tmp_path):
    x = torch.randn(320, 12)
    x[200, 5] = float("nan")  # batch 6 of 10 per epoch (32 rows each, no shuffling)
    seed_everything(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.Linear(8, 12))
    saved = {}

    class Keep(Callback):
        def before_step(self, learn): saved.update({k: v.clone() for k, v in learn.model.state_dict().items()})
    learn = Learner(model, DataLoader(x, batch_size=32), l1, steps=50, accumulate=2, save_every=2, out=tmp_path,
                    cbs=[Keep()], progress=False)
    with pytest.raises(NonFiniteLossError, match=r"at step 4 \(phase 'main', epoch 0, batch 6 of that epoch\)") as e:
        learn.fit()
    assert "The batch itself holds NaN/Inf" in str(e.value) and torch.isnan(e.value.batch).any()
    assert (e.value.step, e.value.epoch, e.value.batch_idx) == (4, 0, 6)
    assert learn.step == 3 and learn.error is e.value
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())  # the bad update never happened
    assert find_checkpoint(tmp_path).name == "step_00000002"  # nothing saved after the failure


def test_non_finite_loss_from_the_model_and_gradient():
    seed_everything(0)
    x = torch.randn(64, 12)
    def blows_up(model, x, step): return l1(model, x) * (float("inf") if step == 3 else 1.0)
    learn = Learner(nn.Linear(12, 12), DataLoader(x, batch_size=16), blows_up, steps=9, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"loss \{'loss': inf\} at step 4 .*lower lr"): learn.fit()

    def sqrt_at_zero(model, x): return torch.sqrt(model(x).pow(2).sum() * 0)  # finite loss (0), infinite gradient
    learn = Learner(nn.Linear(12, 12), DataLoader(x, batch_size=16), sqrt_at_zero, steps=3, grad_clip=1.0, progress=False)
    before = learn.model.weight.clone()
    with pytest.raises(NonFiniteLossError, match="non-finite gradient norm at step 1"): learn.fit()
    assert torch.equal(before, learn.model.weight)


def one_update(batch_size, accumulate, opt=None):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 12))
    x = torch.randn(48, 12, generator=torch.Generator().manual_seed(1))
    mse = lambda m, x: (m(x) - x).pow(2).mean()  # noqa: E731  (smooth: Adam's sign-like steps where a gradient is ~0 would amplify rounding)
    Learner(model, DataLoader(x, batch_size=batch_size), Phase(mse, opt=opt), lr=0.1, steps=1, accumulate=accumulate,
            progress=False).fit()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulation_equals_one_big_batch():
    start = one_update(48, 1, opt=lambda params, lr: torch.optim.SGD(params, lr=0.0))
    for opt in (None, lambda params, lr: torch.optim.SGD(params, lr=lr)):  # AdamW (the default) and plain SGD
        big, acc4, acc3 = one_update(48, 1, opt), one_update(12, 4, opt), one_update(16, 3, opt)
        assert float((big - start).abs().max()) > 1e-3  # the update moved the weights...
        torch.testing.assert_close(acc4, big, rtol=0, atol=1e-6)  # ...and the same way with accumulation
        torch.testing.assert_close(acc3, big, rtol=0, atol=1e-6)


def test_gradient_clipping_bounds_the_norm():
    seen = []

    class After(Callback):
        order = 11  # right after GradClip
        def after_backward(self, learn):
            seen.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in learn.model.parameters()]))))
    seed_everything(0)
    x = torch.randn(64, 12)
    learn = Learner(nn.Linear(12, 12), DataLoader(x, batch_size=16), lambda m, x: 100 * l1(m, x), steps=8,
                    grad_clip=0.25, log_every=1, cbs=[After()], progress=False).fit()
    raw = [r["grad_norm"] for r in learn.history]
    assert min(raw) > 1.0 and all(n == pytest.approx(0.25, rel=1e-5) for n in seen)
    seen.clear()
    Learner(nn.Linear(12, 12), DataLoader(x, batch_size=16), lambda m, x: 1e-4 * l1(m, x), steps=2, grad_clip=0.25,
            cbs=[After()], progress=False).fit()
    assert all(n < 0.01 for n in seen)  # small gradients are left alone
    with pytest.raises(ValueError, match="`max_norm` must be a finite number > 0"): GradClip(-1)


def test_warmup_cosine_matches_its_closed_form():
    steps, warmup, lr, min_lr = 50, 10, 0.02, 0.05
    learn = Learner(nn.Linear(2, 2), [torch.zeros(1, 2)], lambda m, x: m(x).pow(2).sum() + 1, lr=lr, steps=steps,
                    warmup=warmup, min_lr=min_lr, log_every=1, progress=False).fit()
    got = [r["lr"] for r in learn.history]
    want = [lr * ((s + 1) / warmup if s < warmup else
                  min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))) for s in range(steps)]
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert [lr_factor(s, 100, 0, "constant") for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert lr_factor(0, 100, 4) == 0.25 and lr_factor(3, 100, 4) == 1.0 and lr_factor(100, 100, 4) == pytest.approx(0)


def test_ema_matches_its_closed_form_and_warmup():
    seed_everything(0)
    x, model = torch.randn(64, 12), nn.Linear(12, 12)
    ema = EMA(model, decay=0.8, warmup=True)  # an EMA you pass replaces the default one
    expected, history = model.weight.detach().clone(), []

    class Track(Callback):
        order = 30  # after the EMA (20)
        def after_step(self, learn): history.append((model.weight.detach().clone(), ema.module.weight.clone()))
    learn = Learner(model, DataLoader(x, batch_size=16), l1, lr=0.05, steps=12, ema_decay=0.5, cbs=[ema, Track()],
                    progress=False).fit()
    assert learn.ema is ema and sum(isinstance(cb, EMA) for cb in learn.cbs) == 1
    for n, (live, avg) in enumerate(history, start=1):
        d = min(0.8, (1 + n) / (10 + n))  # LDM's LitEma warmup: 0.18, 0.25, ... then 0.8
        expected = d * expected + (1 - d) * live
        torch.testing.assert_close(avg, expected, rtol=0, atol=1e-6)
    assert ema.num_updates == 12 and not torch.allclose(history[-1][0], history[-1][1])


def test_ema_validates_and_swaps_back(tmp_path):
    assert set(make_learner(steps=10, out=tmp_path / "early", progress=True).validate()) == \
        {"step", "epoch", "valid_loss", "valid_ema_loss"}  # validating before fit works, loggers included
    learn = make_learner(steps=10, out=tmp_path, progress=True).fit()
    row = learn.history[-1]
    assert learn.validate() == {**row, "step": 10}  # and after fit (the same weights give the same numbers)
    assert read_log(tmp_path / "log.csv")[-1] == row
    assert {"valid_loss", "valid_ema_loss"} <= set(row) and row["valid_loss"] != row["valid_ema_loss"]
    live = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with learn.ema.swapped():
        assert torch.equal(learn.model[0].weight, learn.ema.module[0].weight)
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in live.items())


def test_two_phases_update_their_own_parameters_and_start_late():
    seed_everything(0)
    model = nn.ModuleDict({"gen": nn.Linear(3, 3), "disc": nn.Linear(3, 1)})
    calls = []

    def d_loss(model, x, step):
        calls.append(("disc", step))
        with torch.no_grad(): fake = model.gen(x)
        return {"loss": model.disc(x).mean() - model.disc(fake).mean(), "gap": torch.tensor(1.0)}

    def g_loss(model, x):
        calls.append(("gen", None))
        return model.disc(model.gen(x)).mean()

    class Watch(Callback):
        def before_step(self, learn): self.before = {k: v.clone() for k, v in model.state_dict().items()}
        def after_step(self, learn):
            changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, self.before[k])}
            self.log = getattr(self, "log", []) + [changed]
    watch = Watch()
    learn = Learner(model, [torch.randn(8, 3) for _ in range(4)], {"disc": Phase(d_loss, start=2), "gen": g_loss},
                    steps=4, log_every=1, cbs=[watch], progress=False).fit()
    assert watch.log == [{"gen"}, {"gen"}, {"gen", "disc"}, {"gen", "disc"}]
    assert calls == [("gen", None), ("gen", None), ("disc", 2), ("gen", None), ("disc", 3), ("gen", None)]
    assert "disc/gap" in learn.history[-1] and "gen/lr" in learn.history[0] and "disc/loss" not in learn.history[0]
    # the discriminator's own schedule starts when it does (warmup from its first update)
    assert set(learn.opts) == {"disc", "gen"} and learn.scheds["disc"].last_epoch == 2


def test_csv_log_plot_and_tensorboard(tmp_path, monkeypatch):
    scalars = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None): self.log_dir, self.purge_step = log_dir, purge_step
        def add_scalar(self, tag, value, step): scalars.append((tag, value, step))
        def flush(self): pass
    fake = types.ModuleType("torch.utils.tensorboard"); fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    learn = make_learner(steps=12, out=tmp_path).fit()
    rows = read_log(tmp_path / "log.csv")
    assert rows == [{k: v for k, v in r.items()} for r in learn.history]
    assert [r["step"] for r in rows if "loss" in r] == [3, 6, 9, 12] and [r["step"] for r in rows if "valid_loss" in r] == [7, 12]
    assert ("loss", learn.history[0]["loss"], 3) in scalars and ("valid_ema_loss", rows[-1]["valid_ema_loss"], 12) in scalars
    import matplotlib
    matplotlib.use("Agg")
    fig = plot_history(tmp_path / "log.csv")
    labels = [line.get_label() for line in fig.axes[0].lines] + [line.get_label() for line in fig.axes[1].lines]
    assert labels == ["loss", "valid_loss", "valid_ema_loss", "lr"]
    with pytest.raises(ValueError, match="empty history"): plot_history([])


def test_cancel_fit_stops_cleanly_and_saves(tmp_path):
    class Stop(Callback):
        def after_step(self, learn):
            if learn.step == 3: raise CancelFit
    learn = make_learner(steps=10, out=tmp_path, cbs=[Stop()]).fit()
    assert learn.step == 3 and learn.error is None and find_checkpoint(tmp_path).name == "step_00000003"


def test_bf16_request_is_fp32_on_cpu():
    with pytest.warns(UserWarning, match="on cpu this run trains in fp32"):
        learn = Learner(nn.Linear(2, 2), [torch.zeros(1, 2)], lambda m, x: m(x).sum(), precision="bf16", device="cpu",
                        progress=False)
    assert learn.precision == "fp32"
    assert Learner(nn.Linear(2, 2), [torch.zeros(1, 2)], lambda m, x: m(x).sum(), device="cpu", progress=False).precision == "fp32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_autocast_on_cuda():
    dtypes = []
    def loss(model, x):
        y = model(x); dtypes.append(y.dtype); return y.float().pow(2).mean()
    learn = Learner(nn.Linear(8, 8), [torch.randn(4, 8)], loss, steps=3, device="cuda", progress=False).fit()
    assert learn.precision == "bf16" and dtypes[0] == torch.bfloat16 and learn.model.weight.dtype == torch.float32


def test_bad_inputs_are_explained():
    data, model = [torch.zeros(2, 3)], nn.Linear(3, 3)
    ok = lambda m, x: m(x).pow(2).mean()  # noqa: E731
    with pytest.raises(ValueError, match="`accumulate` must be >= 1"): Learner(model, data, ok, accumulate=0)
    with pytest.raises(TypeError, match="`accumulate` must be an integer"): Learner(model, data, ok, accumulate=1.5)
    with pytest.raises(ValueError, match="0 turns clipping off"): Learner(model, data, ok, grad_clip=-1)
    with pytest.raises(ValueError, match=r"`warmup` \(20\) must be <= `steps` \(10\)"): TrainConfig(steps=10, warmup=20)
    with pytest.raises(ValueError, match="no field"): Learner(model, data, ok, learning_rate=1e-3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"): Learner(lambda x: x, data, ok)
    with pytest.raises(TypeError, match="loss_fn must be a function"): Learner(model, data, "l1")
    with pytest.raises(TypeError, match=r"called as loss_fn\(model, batch\)"): Learner(model, data, lambda x: x)
    with pytest.raises(TypeError, match="train_dl must be an iterable"): Learner(model, 3, ok)
    with pytest.raises(TypeError, match="cbs must hold Callback"): Learner(model, data, ok, cbs=[print])
    with pytest.raises(TypeError, match="config must be a TrainConfig"): Learner(model, data, ok, config={"lr": 1})
    with pytest.raises(ValueError, match=r"trains `model.disc`, which Linear does not have"):
        Learner(model, data, {"disc": ok, "gen": ok})
    with pytest.raises(ValueError, match="train the same parameters"):
        Learner(model, data, {"a": Phase(ok, params=lambda m: m.parameters()), "b": Phase(ok, params=lambda m: [m.bias])})
    with pytest.raises(TypeError, match="not Learner events"):
        type("Typo", (Callback,), {"after_epoch": lambda self, learn: None})
    with pytest.raises(ValueError, match="until=20 is beyond steps=10"): Learner(model, data, ok, steps=10).fit(until=20)
    with pytest.raises(ValueError, match="already done 3 updates"):
        Learner(model, data, ok, steps=10, progress=False).fit(until=3).fit(until=2)
    with pytest.raises(TypeError, match="must return a loss tensor or a dict with a 'loss' entry"):
        Learner(model, data, lambda m, x: {"l1": m(x).mean()}, progress=False).fit()
    with pytest.raises(ValueError, match=r"returned 'loss' with shape \(2, 3\)"):
        Learner(model, data, lambda m, x: m(x), progress=False).fit()
    with pytest.raises(ValueError, match="does not depend on any trainable parameter"):
        Learner(model, data, lambda m, x: m(x).mean().detach(), progress=False).fit()
    with pytest.raises(ValueError, match="train_dl yielded no batches"): Learner(model, [], ok, progress=False).fit()
    with pytest.raises(ValueError, match="no validation data"): Learner(model, data, ok, progress=False).validate()


def test_distributed_two_processes_match_one(tmp_path):
    "torchrun with 2 CPU processes (gloo): identical weights on both ranks, equal to one process on the full batches."
    # gloo on the loopback interface: the machine's hostname may resolve to an address the processes cannot reach
    script, env = ROOT / "tests/learner_ddp_run.py", {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path), "16"]
    two = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=240)
    if two.returncode != 0 and "Signal" in two.stderr and 'learner_ddp_run.py", line' not in two.stderr:
        first = two.stderr[-1500:]   # a process killed by a signal, not by an error in the script: launch once more, keep the log
        two = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=240)
        assert two.returncode == 0, f"failed twice; first launch:\n{first}\nsecond:\n{two.stderr[-1500:]}"
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path), "16"], capture_output=True, text=True, env=env, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    for kind in ("single", "gan", "resume"):
        r0, r1, solo = (load_file(str(tmp_path / f"{kind}_{w}.safetensors")) for w in ("2_0", "2_1", "1_0"))
        assert_bitwise(r0, r1)  # DDP keeps the processes in lockstep
        for k in r0: torch.testing.assert_close(r0[k], solo[k], rtol=0, atol=1e-5)
    assert_bitwise(load_file(str(tmp_path / "single_2_0.safetensors")), load_file(str(tmp_path / "resume_2_0.safetensors")))
    losses_two, losses_one = (json.loads(p.stdout.split("losses", 1)[1].strip().splitlines()[0]) for p in (two, one))
    assert losses_two == pytest.approx(losses_one, rel=1e-5) and losses_two[-1] < 0.6 * losses_two[0]
    # only process 0 wrote logs and checkpoints
    assert [p.name for p in (tmp_path / "run_2/checkpoints").iterdir()] == ["step_00000006"]
    assert len(read_log(tmp_path / "run_2/log.csv")) == 6


def test_weighted_loader_draws_in_proportion_and_reproducibly():
    from msg_edu.learner import make_loader
    data = torch.arange(8)
    labels = [0] * 6 + [1] * 2                                      # class 1 is rare
    w = [1 / labels.count(c) for c in labels]                       # class balance
    dl = make_loader(data, 4, weights=w, seed=3)
    draws = torch.cat([b for _ in range(200) for b in dl])
    frac_rare = float((draws >= 6).float().mean())
    assert abs(frac_rare - 0.5) < 0.03, frac_rare
    dl = make_loader(data, 4, weights=w, seed=3)
    again = torch.cat([b for _ in range(200) for b in dl])
    assert torch.equal(draws, again)
    with pytest.raises(ValueError, match="one per example"): make_loader(data, 4, weights=[1.0] * 3)


OLD_LEARNER_NAMES = ['EVENTS', 'CKPT_WEIGHTS', 'CKPT_STATE', 'CKPT_FORMAT', 'TrainConfig', 'lr_factor', 'Callback', 'CancelFit',
                     'NonFiniteLossError', 'NaNGuard', 'GradClip', 'EMA', 'ProgressBar', 'CSVLogger', 'TensorBoardLogger',
                     'read_log', 'plot_history', 'Phase', 'to_device', 'rng_state', 'set_rng_state', 'init_distributed',
                     'make_loader', 'Learner', 'save_checkpoint', 'find_checkpoint', 'has_checkpoint', 'run_contents',
                     'RunExistsError', 'NoRunError', 'check_run_folder', 'read_checkpoint', 'load_checkpoint', '_step_of']


def test_old_learner_import_paths_still_work():
    "learner.py was split into optim / callbacks / distributed / checkpoint / learner; every name it had still imports."
    import msg_edu.callbacks, msg_edu.distributed, msg_edu.optim
    homes = [msg_edu.optim, msg_edu.callbacks, msg_edu.distributed, msg_edu.checkpoint, L]
    for name in OLD_LEARNER_NAMES:
        obj = getattr(L, name)
        assert any(getattr(m, name, None) is obj for m in homes[:-1]) or name in L.__all__, name
