"""The official score_sde checkpoint fixtures (../shared/reference/score_sde_compat): paths and configs."""
import json
import os
from pathlib import Path

import pytest

from configs.default_configs import get_base_config

COMPAT_DIR = Path(os.environ.get('MSGM_COMPAT_DIR',
                                 Path(__file__).resolve().parents[1].parent / 'shared/reference/score_sde_compat'))
FULL_FIXTURES = ('ncsnpp_ve', 'ddpmpp_vp')
KEY_FIXTURES = ('ncsnpp_ve', 'ddpmpp_vp', 'ddpm_vp', 'ncsnpp_subvp', 'ncsnpp_ve_skip')
REL_TOL = 1e-4  # FORMAT.md: max|ours - ref| <= 1e-4 * max|ref|


def _fixture(name):
  path = COMPAT_DIR / name
  if not path.exists():
    pytest.skip(f'score_sde compatibility fixture {path} not found (set MSGM_COMPAT_DIR)')
  return path


def _layer(base, values):
  """Writes a plain nested dict into a ConfigDict; lists become tuples where the default is a tuple."""
  for key, value in values.items():
    if isinstance(value, dict):
      _layer(base[key], value)
      continue
    if key in base and isinstance(base[key], tuple) and isinstance(value, list):
      value = tuple(value)
    base[key] = value


def config_from_json(name):
  cfg = get_base_config()
  with open(_fixture(f'config_{name}.json')) as f:
    _layer(cfg, json.load(f)['config'])
  return cfg
