import math

import pytest
import torch

from msg_edu.toyslakh import ToySlakhConfig, make_toy_slakh


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def sines(sr: int, seconds: float = 1.0, freqs=(110.0, 440.0, 1234.5, 3000.0, 5555.5, 6900.0), seed: int = 0) -> torch.Tensor:
    "A sum of sines with random phases, computed in float64 at `sr` (an analytic reference at any rate)."
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    phases = torch.rand(len(freqs), generator=g, dtype=torch.float64) * 2 * math.pi
    amps = torch.linspace(0.3, 0.05, len(freqs), dtype=torch.float64)
    return sum(a * torch.sin(2 * math.pi * f * t + p) for f, a, p in zip(freqs, amps, phases)).float()


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    "A tiny ToySlakh (6 tracks x 4 s at 16 kHz) in Slakh2100's layout, written once per test run; read-only."
    return make_toy_slakh(tmp_path_factory.mktemp("toy") / "toyslakh", **ToySlakhConfig.preset("tiny").to_dict())


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    "An audio cache shared by the tests that read `toy`."
    return tmp_path_factory.mktemp("cache")
