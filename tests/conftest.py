import os

import torch

# Triton kernels run under the interpreter on CPU-only machines (CI). Must be set before any
# kernel module is imported. bf16 tl.dot is unreliable in the interpreter: test fp32/fp16 there.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many tiny ops: one intra-op thread avoids OpenMP contention (much faster
    on a small, shared CI machine). Use with pytestmark = pytest.mark.usefixtures("one_thread")."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
