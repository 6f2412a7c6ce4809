"""Suite-wide set-up: one CPU thread, seeded randomness and a private dataset root."""

import os
import random
import shutil
import tempfile

# Float reductions are split across threads, so results depend on the thread count, which by
# default is the machine's core count. Pin it for this process and, through the environment, for
# every process a test spawns (DDP ranks, train_net.py subprocesses), so that no result depends on
# the machine.
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Generated datasets go to a private folder, never into the working tree. Set before any test
# imports assigndet.data, whose builtin datasets read this variable.
_PRIVATE_DATASETS = None
if "ASSIGNDET_DATASETS" not in os.environ:
    _PRIVATE_DATASETS = tempfile.mkdtemp(prefix="assigndet-datasets-")
    os.environ["ASSIGNDET_DATASETS"] = _PRIVATE_DATASETS


def pytest_sessionfinish(session, exitstatus):
    if _PRIVATE_DATASETS is not None:
        shutil.rmtree(_PRIVATE_DATASETS, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
