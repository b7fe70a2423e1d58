"""Training checkpoints hold no pickle, and a run resumed from one ends where an uninterrupted run ends."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tiny import counting_loss

from distill.core.errors import ConfigError
from distill.training.checkpoints import load_state, save_state
from distill.training.groups import GroupConfig
from distill.training.losses import MarginMSE
from distill.training.trainer import TrainConfig

torch.set_num_threads(1)


def test_states_round_trip_with_their_types(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "python": random.getstate(), "numpy": np.random.get_state(),
             "cpu": torch.random.get_rng_state()}
    save_state(state, tmp_path, "s")
    back = load_state(tmp_path, "s")
    assert back["python"] == state["python"]  # tuples stay tuples: random.setstate accepts it
    assert back["numpy"][1].dtype == np.uint32 and np.array_equal(back["numpy"][1], state["numpy"][1])
    assert torch.equal(back["cpu"], state["cpu"])
    assert set(back["optimizer"]["state"]) == {0, 1}  # int keys stay ints
    for key, moments in state["optimizer"]["state"].items():
        assert all(torch.equal(back["optimizer"]["state"][key][k], v) for k, v in moments.items())
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert load_state(tmp_path, "absent") is None
    with pytest.raises(TypeError, match="without pickle"):
        save_state({"f": object()}, tmp_path, "bad")


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does_and_no_pickle_is_written(tiny_beir, tiny_cross_encoder,
                                                                                      tmp_path):
    from distill.core.schema import SCORE
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from students.train import train_student

    dataset = load_beir(tiny_beir, "train")
    run = bm25_run(dataset, 6)
    scores = run.select("qid", "docid", SCORE)  # BM25 as the teacher: any fixed signal will do

    def train(name: str, loss, resume: bool = False):
        config = TrainConfig(epochs=2, lr=1e-3, batch_size=4, max_length=48, eval_steps=1,
                             precision="fp32", warmup_ratio=0.0, checkpoints_dir=str(tmp_path / f"{name}.ckpt"),
                             resume_from_checkpoint=True if resume else None)
        return train_student("cross-encoder", dataset, scores, tmp_path / name, loss=loss, init=str(tiny_cross_encoder),
                             group_config=GroupConfig(n_negatives=3), train_config=config)

    train("whole", MarginMSE())
    with pytest.raises(KeyboardInterrupt):
        train("resumed", counting_loss(stop_at=4))
    checkpoints = sorted((tmp_path / "resumed.ckpt").glob("checkpoint-*"))
    assert checkpoints, "no checkpoint before the interruption"
    train("resumed", MarginMSE(), resume=True)

    written = [p for p in (tmp_path / "resumed.ckpt").rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"optimizer.safetensors", "scheduler.json", "rng_state.safetensors"}
    assert not [p for p in written if p.suffix in (".pt", ".pth", ".bin", ".pkl")], written
    assert not [p for p in written if p.read_bytes()[:2] in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05")], written
    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)

    with pytest.raises(KeyboardInterrupt):
        train("old", counting_loss(stop_at=4))
    for path in (tmp_path / "old.ckpt").glob("checkpoint-*/optimizer.*"):
        path.unlink()  # as a checkpoint written by torch.save (an older distill) looks to this one
    with pytest.raises(ConfigError, match="optimizer"):
        train("old", MarginMSE(), resume=True)
