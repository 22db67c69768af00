"""CUDA device handling, checked on the CPU by mocking the few torch.cuda queries it makes.

The fakes behave like torch's own: the per-process memory fraction functions refuse a CUDA
device without an index (``ValueError: Expected a torch.device with a specified index``).
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lib.errors import UserError
from lib.evaluation.scoring import block_budget
from lib.precision import resolve, resolve_device, with_index

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import benchmark_eval  # noqa: E402

GIB = 2**30


def _index(device):
    device = torch.device(device)
    if device.index is None:
        raise ValueError("Expected a torch.device with a specified index or an integer")
    return device.index


@pytest.fixture()
def fake_cuda(monkeypatch):
    """Two 80 GiB cards, card 1 current: 30 GiB free, 2 GiB reserved by this process, and a
    per-process cap of 25% of the card; every query is recorded with the index it was given."""
    calls = []

    def record(name, result):
        def query(device=None):
            calls.append((name, _index(device)))
            return result
        return query

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", record("mem_get_info", (30 * GIB, 80 * GIB)))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction",
                        record("get_per_process_memory_fraction", 0.25))
    monkeypatch.setattr(torch.cuda, "memory_reserved", record("memory_reserved", 2 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        record("get_device_properties", SimpleNamespace(total_memory=80 * GIB)))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: calls.append(("set_fraction", fraction,
                                                                    _index(device))))
    return calls


def test_a_cuda_device_gets_its_index_where_it_enters(fake_cuda):
    assert resolve_device() == torch.device("cuda:1")  # cuda when available, current card
    assert resolve_device("cuda") == torch.device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")
    assert with_index(torch.device("cpu")) == torch.device("cpu")
    assert resolve("auto", resolve_device("cuda")) == "bf16"


def test_cuda_asked_for_without_cuda_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == torch.device("cpu")
    with pytest.raises(UserError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")


def test_block_budget_of_an_index_less_cuda_device(fake_cuda):
    # the 25% cap (20 GiB) minus the 2 GiB reserved binds before the 30 GiB free
    expected = int(18 * GIB * 0.25) // 4
    assert block_budget(torch.device("cuda")) == expected
    assert block_budget(torch.device("cuda:1")) == expected
    assert {index for _, index in fake_cuda} == {1}
    assert {name for name, _ in fake_cuda} == {"mem_get_info", "get_per_process_memory_fraction",
                                              "memory_reserved"}


def test_block_budget_follows_free_memory_and_has_a_floor(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)
    assert block_budget(torch.device("cuda:0"), fraction=0.5) == int(30 * GIB * 0.5) // 4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (GIB // 1024, 80 * GIB))
    assert block_budget(torch.device("cuda:0")) == 2**20


def test_benchmark_memory_cap_on_the_resolved_device(fake_cuda):
    benchmark_eval.cap_memory(resolve_device("cuda"), 24)
    assert fake_cuda[-1] == ("set_fraction", 24 / 80, 1)
    benchmark_eval.cap_memory(resolve_device("cuda:0"), 200)  # more than the card: no cap
    assert fake_cuda[-1] == ("set_fraction", 1.0, 0)
