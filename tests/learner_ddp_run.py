"""Helper for tests/test_learner.py: trains under `python -m torch.distributed.run --nproc_per_node 2` (gloo, CPU).

Also runs as a plain single process (the reference). Usage: learner_ddp_run.py OUT_DIR GLOBAL_BATCH
Each process saves its final weights to OUT_DIR/{kind}_{world}_{rank}.safetensors, for three runs:
  single: one loss, accumulate 2, Adam + cosine, clipping, EMA;
  gan:    two phases (disc, then gen) with their own optimisers;
  resume: `single` stopped at step 3, rebuilt from scratch, loaded and finished.
"""
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from msg_edu.core import seed_everything
from msg_edu.learner import Learner, make_loader

out, global_batch = Path(sys.argv[1]), int(sys.argv[2])
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
g = torch.Generator().manual_seed(0)
x = torch.randn(96, 4, generator=g)
data = torch.cat([x, x @ torch.randn(4, 1, generator=g) + 0.1 * torch.randn(96, 1, generator=g)], 1)  # (96, 5): inputs, target


def regression(model, batch): return (model(batch[:, :4]) - batch[:, 4:]).pow(2).mean()


def d_loss(model, batch):
    with torch.no_grad(): fake = model.gen(batch[:, :4])
    return (model.disc(batch[:, 4:]) - 1).pow(2).mean() + model.disc(fake).pow(2).mean()  # least-squares GAN


def g_loss(model, batch): return (model.disc(model.gen(batch[:, :4])) - 1).pow(2).mean()


def learner(kind, run_out=None):
    seed_everything(0)
    if kind == "gan":
        model = nn.ModuleDict({"gen": nn.Linear(4, 1), "disc": nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))})
        loss, extra = {"disc": d_loss, "gen": g_loss}, {}
    else:
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        loss, extra = regression, dict(accumulate=2, grad_clip=1.0, ema_decay=0.9)
    # a DistributedSampler under torchrun (each process gets a shard of every batch), a plain loader in one process
    per_process = global_batch // WORLD // extra.get("accumulate", 1)
    dl = make_loader(data, per_process, shuffle=False)
    return Learner(model, dl, loss, lr=1e-2, steps=6, warmup=2, log_every=1, progress=False, out=run_out, **extra)


def save(learn, kind):
    weights = {f"model.{k}": v for k, v in learn.model.state_dict().items()}
    if learn.ema is not None: weights.update({f"ema.{k}": v for k, v in learn.ema.module.state_dict().items()})
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / f"{kind}_{learn.world_size}_{learn.rank}.safetensors"))


straight = learner("single", out / f"run_{WORLD}").fit()
save(straight, "single")
if straight.rank == 0: print("losses", [r["loss"] for r in straight.history if "loss" in r])
save(learner("gan").fit(), "gan")

stopped = learner("single", out / f"stopped_{WORLD}").fit(until=3)
torch.manual_seed(123)  # a fresh start would not have the same random state
save(learner("single", out / f"stopped_{WORLD}").load(out / f"stopped_{WORLD}").fit(), "resume")

import torch.distributed as dist  # noqa: E402
if dist.is_initialized():  # a clean teardown: leaving gloo's threads to process exit can abort a rank ("terminate called ...")
    dist.barrier()
    dist.destroy_process_group()
