"""Shared test settings, and the device the suite's agents run on.

`pytest --device cuda` (or RLGEOM_TEST_DEVICE=cuda) runs every agent built with device="auto" (the default)
on that device, and the tests that take the `agent_device` fixture too; without CUDA those tests skip,
and tests marked `cuda` skip as well. Default: cpu, also on a machine with a GPU, so results do not
depend on the machine.
"""

import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default=None,
                     help="device for the suite's agents: cpu (default), cuda or cuda:N; also RLGEOM_TEST_DEVICE")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")


def requested_device(config) -> str:
    return config.getoption("--device") or os.environ.get("RLGEOM_TEST_DEVICE") or "cpu"


def available(device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_available()
                                     and (device.index or 0) < torch.cuda.device_count())


def pytest_report_header(config):
    device = torch.device(requested_device(config))
    note = "" if available(device) else " (not available here: tests that need it are skipped)"
    return f"rlgeom test device: {device}{note}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA, which this machine does not have")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def agent_device(request) -> torch.device:
    """The device the suite runs agents on (--device / RLGEOM_TEST_DEVICE); skips where it is absent."""
    device = torch.device(requested_device(request.config))
    if not available(device):
        pytest.skip(f"test device {device} requested but not available on this machine")
    return device


@pytest.fixture(autouse=True)
def _auto_is_the_test_device(request, monkeypatch):
    """device="auto" resolves to the test device (the machine's own choice would make results vary)."""
    from agents import devices

    device = torch.device(requested_device(request.config))
    if not available(device):
        device = torch.device("cpu")
    monkeypatch.setattr(devices, "auto_device", lambda *args, **kwargs: device)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny networks on shared CPU cores: intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
