"""Configs and checkpoints as a researcher uses them from outside the notebooks."""
import dataclasses
import json
from typing import ClassVar

import pytest
import torch
from torch import nn

from msg_edu.core import Config, atomic_write, default_preset, in_test, seed_everything
from msg_edu.pretrained import Pretrained, from_pretrained
from msg_edu.mel import MelConfig


@dataclasses.dataclass
class NetConfig(Config):
    width: int = 16
    kernel: tuple[int, int] = (3, 3)
    mel: MelConfig = dataclasses.field(default_factory=MelConfig)
    presets: ClassVar[dict] = {"tiny": dict(width=4), "toy": dict(width=8), "slakh": {}}


class Net(nn.Module, Pretrained):
    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(1, config.width, config.kernel)
        self.head = nn.Linear(config.width, 2)
        self.tied = self.head  # shared parameters must survive safetensors
        self.register_buffer("stat", torch.arange(3.0))

    def forward(self, x): return self.head(self.conv(x).mean((-1, -2)))


def test_nested_config_round_trip():
    cfg = NetConfig.preset("toy", mel=MelConfig(n_mels=128).to_dict())
    assert isinstance(cfg.mel, MelConfig) and cfg.mel.n_mels == 128 and cfg.width == 8
    assert NetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.replace(width=3).width == 3
    with pytest.raises(ValueError, match="no preset 'big'"): NetConfig.preset("big")
    with pytest.raises(ValueError, match=r"no field\(s\) \['widht'\]"): NetConfig.from_dict({"widht": 3})


def test_save_and_load_pretrained(tmp_path):
    seed_everything(1)
    net = Net(NetConfig.preset("tiny"))
    net.save_pretrained(tmp_path / "net")
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == ["config.json", "model.safetensors"]
    back = Net.from_pretrained(tmp_path / "net")
    x = torch.randn(2, 1, 5, 5)
    assert torch.equal(net(x), back(x)) and back.config == net.config


def test_pretrained_mismatches_are_explained(tmp_path):
    Net(NetConfig.preset("tiny")).save_pretrained(tmp_path / "net")
    meta = json.loads((tmp_path / "net/config.json").read_text())
    meta["config"]["width"] = 5
    (tmp_path / "net/config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape mismatches"): Net.from_pretrained(tmp_path / "net")

    class Other(Net): pass
    with pytest.raises(ValueError, match="holds a Net, not a Other"): from_pretrained(Other, tmp_path / "net")
    with pytest.raises(FileNotFoundError, match="no config.json"): Net.from_pretrained(tmp_path / "missing")
    (tmp_path / "net/config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"): Net.from_pretrained(tmp_path / "net")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("new, half written")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_preset_follows_test_mode(monkeypatch):
    monkeypatch.setenv("IN_TEST", "1"); monkeypatch.delenv("MSG_EDU_PRESET", raising=False)
    assert in_test() and default_preset() == "tiny"
    monkeypatch.delenv("IN_TEST")
    assert not in_test() and default_preset() == "toy"
    monkeypatch.setenv("MSG_EDU_PRESET", "huge")
    with pytest.raises(ValueError, match="not a preset"): default_preset()


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os
    with atomic_write(tmp_path / "a.txt", "w") as f: f.write("x")
    umask = os.umask(0); os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    with atomic_write(tmp_path / "b.bin", mode=None) as p:  # a library that deletes and recreates the file, 0600
        p.unlink(); fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o600); os.close(fd)
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_checkpoints_live_in_pretrained_and_designs_core_paths_still_work():
    import importlib, subprocess, sys
    code = "import sys, msg_edu.core; print('msg_edu.pretrained' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    import msg_edu.core as old
    new = importlib.import_module("msg_edu.pretrained")
    assert set(old._MOVED) == set(new.__all__) - {"state_dict_problems"}   # (added after the move)
    for name in old._MOVED: assert getattr(old, name) is getattr(new, name), name
    from msg_edu.core import from_pretrained as old_load, save_pretrained as old_save   # DESIGN.md's paths
    assert (old_load, old_save) == (new.from_pretrained, new.save_pretrained)
    with pytest.raises(AttributeError, match="no attribute 'nope'"): old.nope


def test_moved_names_is_the_one_alias_mechanism():
    "Every module that gave names to a later chapter uses core.moved_names; each alias resolves, a typo still fails."
    import importlib
    from msg_edu.core import moved_names
    table, getattr_ = moved_names("demo_module", {"mel": ("MelFrontend",)})
    assert table == {"MelFrontend": "mel"} and getattr_("MelFrontend") is importlib.import_module("msg_edu.mel").MelFrontend
    with pytest.raises(AttributeError, match="'msg_edu.demo_module' has no attribute 'Nope'"): getattr_("Nope")
    for name in ("core", "data", "diffusion", "metrics", "soundfont", "vocoder", "vae"):
        m = importlib.import_module(f"msg_edu.{name}")
        assert m.__getattr__.__qualname__.startswith("moved_names"), name
        for alias, home in m._MOVED.items(): assert getattr(m, alias) is getattr(importlib.import_module(f"msg_edu.{home}"), alias)
