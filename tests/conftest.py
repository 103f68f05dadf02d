"""Shared test fixtures.

Randomized tests use fixed seeds; statistical tests state their tolerance in standard errors (a
5-SE bound fails with probability < 6e-7 per checked quantity under the null hypothesis, so a
seeded run is reproducible and a new seed fails rarely).
"""

from __future__ import annotations

import hashlib
import os
import sys

# tests import the packages from the checkout even when it is not installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest
import torch
from hypothesis import settings

# torch.compile's cache, per checkout and Python environment: Inductor's default (/tmp) is shared
# by every environment on the machine, and an entry compiled under another installation of the
# same torch version can fail to rebuild here (seen: "at::vec has not been declared")
_ENV = hashlib.sha1(f"{sys.prefix}|{torch.__version__}".encode()).hexdigest()[:12]
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", _ENV),
)

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors, so CI checks their
# results against the CPU path. The variable must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Property tests draw their examples from a fixed seed so CI is reproducible; run with
# ``--hypothesis-profile=explore`` to search fresh examples.
settings.register_profile("default", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=200, print_blob=True)
settings.load_profile("default")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests run thousands of tiny dense operations, where intra-op threads only add wake-up
    latency (and stall badly on a loaded, shared machine): one thread for the whole session."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
