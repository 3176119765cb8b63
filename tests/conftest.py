"""Shared fixtures: the repository root on sys.path, the official-fixture folder, and the device list."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

COMPAT_DIR = Path(os.environ.get('MSGM_COMPAT_DIR', ROOT.parent / 'shared' / 'reference' / 'score_sde_compat'))

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason='CUDA is not available'))]


@pytest.fixture(scope='session', autouse=True)
def one_thread():
  """The tensors in the tests are tiny: one intra-op thread avoids OpenMP waits on a small, busy CPU."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(params=DEVICES)
def device(request):
  return torch.device(request.param)


@pytest.fixture
def compat_dir():
  if not COMPAT_DIR.is_dir():
    pytest.skip(f'official checkpoint fixtures not found at {COMPAT_DIR} (set MSGM_COMPAT_DIR)')
  return COMPAT_DIR
