"""NCSN++ / DDPM++ (models/ncsnpp.py) and DDPM (models/ddpm.py).

Compatibility with the official score_sde_pytorch checkpoints is checked against the fixtures in
``$MSGM_COMPAT_DIR`` (default ``<repo>/../shared/reference/score_sde_compat``, see FORMAT.md there):
state-dict keys/shapes/dtypes, outputs of the raw and EMA weights, the score function, and the
initialisation stream. The remaining tests use tiny configurations and run on the CPU in seconds.
"""
import copy
import json

import pytest
import torch

import sde_lib
from configs.default_configs import get_base_config
from models import ddpm, ncsnpp
from models import utils as mutils

from official_fixtures import COMPAT_DIR, FULL_FIXTURES, KEY_FIXTURES, REL_TOL, _fixture, config_from_json  # noqa: F401


# Official CIFAR-10 architecture settings shared by the source configs of the key-only fixtures.
_COMMON = dict(nonlinearity='swish', normalization='GroupNorm', attn_resolutions=(16,), resamp_with_conv=True,
               conditional=True, num_res_blocks=1, dropout=0.1, num_scales=1000, sigma_max=50.)
_NCSNPP = dict(name='ncsnpp', fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type='biggan',
               progressive_combine='sum', attention_type='ddpm', init_scale=0., fourier_scale=16., conv_size=3)


def config_from_format_md(name):
  """Source config file values + the size changes listed in FORMAT.md, for the key-only fixtures."""
  cfg = get_base_config()
  if name == 'ddpm_vp':  # configs/vp/ddpm/cifar10_continuous.py; nf=32, ch_mult=(1,2), num_res_blocks=1
    cfg.training.sde = 'vpsde'
    cfg.data.centered = True
    cfg.model.update(dict(_COMMON, name='ddpm', scale_by_sigma=False, nf=32, ch_mult=(1, 2)))
  elif name == 'ncsnpp_subvp':  # configs/subvp/cifar10_ncsnpp_continuous.py; nf=16, ch_mult=(1,2,2)
    cfg.training.sde = 'subvpsde'
    cfg.data.centered = True
    cfg.model.update(dict(_COMMON, **_NCSNPP, scale_by_sigma=False, nf=16, ch_mult=(1, 2, 2), fir=True,
                          progressive='none', progressive_input='residual', embedding_type='positional'))
  elif name == 'ncsnpp_ve_skip':  # configs/ve/celebahq_256_ncsnpp_continuous.py (LSUN defaults); nf=8, 32 px
    cfg.training.sde = 'vesde'
    cfg.data.update(dict(centered=False, image_size=32, num_channels=3))
    cfg.model.update(dict(_COMMON, **_NCSNPP, sigma_max=348., num_scales=2000, dropout=0., scale_by_sigma=True,
                          nf=8, ch_mult=(1, 2, 2), fir=True, progressive='output_skip',
                          progressive_input='input_skip', embedding_type='fourier'))
  else:
    return config_from_json(name)
  return cfg


def _read_keys(name):
  lines = _fixture(f'keys_{name}.txt').read_text().strip().splitlines()
  return [tuple(line.split('\t')) for line in lines]


def _listing(model):
  return [(k, json.dumps(list(v.shape)), str(v.dtype).replace('torch.', '')) for k, v in model.state_dict().items()]


def _rel_err(out, ref):
  return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize('name', KEY_FIXTURES)
def test_state_dict_matches_official_listing(name):
  expected = _read_keys(name)
  model = mutils.create_model(config_from_format_md(name))
  assert _listing(model) == expected


@pytest.fixture(scope='module', params=FULL_FIXTURES)
def official(request):
  """(name, config, model with the raw checkpoint weights in eval mode, checkpoint, io tensors)."""
  name = request.param
  cfg = config_from_json(name)
  ckpt = torch.load(_fixture(f'ckpt_{name}.pth'), map_location='cpu', weights_only=True)
  io = torch.load(_fixture(f'io_{name}.pt'), map_location='cpu', weights_only=True)
  model = mutils.create_model(cfg)
  state = {k[len('module.'):]: v for k, v in ckpt['model'].items()}
  model.load_state_dict(state, strict=True)
  return name, cfg, model.eval(), ckpt, io


def test_official_checkpoint_outputs(official):
  _, _, model, _, io = official
  with torch.no_grad():
    out = model(io['x'], io['labels'])
  assert out.dtype == torch.float32
  assert _rel_err(out, io['model_out']) <= REL_TOL


def test_official_checkpoint_score(official):
  _, cfg, model, _, io = official
  sde = sde_lib.get_sde(cfg)
  torch.testing.assert_close(sde.model_labels(io['t'], True), io['labels'])
  with torch.no_grad():
    score = mutils.get_score_fn(sde, model, train=False, continuous=True)(io['x'], io['t'])
  assert _rel_err(score, io['score']) <= REL_TOL


def test_official_checkpoint_ema_outputs(official):
  name, _, model, ckpt, io = official
  model = copy.deepcopy(model)
  trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  shadow = ckpt['ema']['shadow_params']
  assert len(trainable) == len(shadow)
  with open(_fixture(f'config_{name}.json')) as f:
    assert [n for n, _ in trainable] == json.load(f)['ema']['shadow_param_names']
  with torch.no_grad():
    for (_, p), s in zip(trainable, shadow):
      p.copy_(s)
    out = model(io['x'], io['labels'])
  assert _rel_err(out, io['model_out_ema']) <= REL_TOL
  assert _rel_err(out, io['model_out']) > 0.1  # the EMA weights really are different


def test_initialisation_follows_official_random_stream(official):
  """torch.manual_seed(0) + the fixture's perturbation recipe (FORMAT.md 'generation') rebuilds the checkpoint."""
  _, cfg, _, ckpt, _ = official
  torch.manual_seed(0)
  model = mutils.create_model(cfg)
  g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
  params = dict(model.named_parameters())
  rebuilt = {n: p.detach() + 0.02 * torch.randn(p.shape, generator=g1) for n, p in params.items()}
  for n, p in params.items():
    if p.requires_grad:
      rebuilt[n] = rebuilt[n] + 0.01 * torch.randn(p.shape, generator=g2)
  for n, value in rebuilt.items():
    torch.testing.assert_close(value, ckpt['model']['module.' + n], rtol=0, atol=1e-6, msg=n)


# ----------------------------------------------------------------------------------------------
# Tiny configurations.

def tiny_config(style, size=32, channels=3):
  """A small network of the given style; three levels (size -> size/2 -> size/4), attention at size/2."""
  cfg = get_base_config()
  cfg.data.image_size = size
  cfg.data.num_channels = channels
  m = cfg.model
  m.update(dict(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(size // 2,), dropout=0.,
                num_scales=100, fourier_scale=16., init_scale=0.))
  if style == 'ncsnpp_ve':  # NCSN++: Fourier, FIR, BigGAN blocks, residual input pyramid, σ scaling
    cfg.training.sde = 'vesde'
    cfg.data.centered = False
    m.update(dict(name='ncsnpp', embedding_type='fourier', fir=True, resblock_type='biggan', progressive='none',
                  progressive_input='residual', scale_by_sigma=True))
  elif style == 'ddpmpp_vp':  # DDPM++: positional embedding, no FIR
    cfg.training.sde = 'vpsde'
    cfg.data.centered = True
    m.update(dict(name='ncsnpp', embedding_type='positional', fir=False, resblock_type='biggan',
                  progressive='none', progressive_input='none', scale_by_sigma=False))
  elif style == 'ncsnpp_skip':  # high-resolution NCSN++ paths
    cfg.training.sde = 'vesde'
    cfg.data.centered = False
    m.update(dict(name='ncsnpp', embedding_type='fourier', fir=True, resblock_type='biggan',
                  progressive='output_skip', progressive_input='input_skip', progressive_combine='sum',
                  scale_by_sigma=True))
  elif style == 'ncsnpp_other':  # DDPM blocks + FIR resampling layers, residual output pyramid, cat combine
    cfg.training.sde = 'subvpsde'
    cfg.data.centered = True
    m.update(dict(name='ncsnpp', embedding_type='positional', fir=True, resblock_type='ddpm',
                  progressive='residual', progressive_input='input_skip', progressive_combine='cat',
                  scale_by_sigma=False, skip_rescale=False))
  elif style == 'ddpm':
    cfg.training.sde = 'vpsde'
    cfg.data.centered = True
    m.update(dict(name='ddpm', nf=32, scale_by_sigma=False))
  else:
    raise KeyError(style)
  return cfg


def tiny_labels(cfg, batch):
  t = torch.linspace(0.1, 0.9, batch)
  return sde_lib.get_sde(cfg).model_labels(t, True)


STYLES = ('ncsnpp_ve', 'ddpmpp_vp', 'ncsnpp_skip', 'ddpm')


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('size', [28, 32, 64])
@pytest.mark.parametrize('style', STYLES)
def test_output_shape(style, size, channels):
  torch.manual_seed(0)
  cfg = tiny_config(style, size, channels)
  model = mutils.create_model(cfg).eval()
  x = torch.randn(2, channels, size, size)
  with torch.no_grad():
    out = model(x, tiny_labels(cfg, 2))
  assert out.shape == x.shape
  assert out.dtype == x.dtype
  assert torch.isfinite(out).all()


def test_other_progressive_paths_and_ddpm_resblocks():
  """resblock_type='ddpm' with FIR conv resampling, progressive='residual', input_skip with 'cat'."""
  torch.manual_seed(0)
  for size in (28, 32):
    cfg = tiny_config('ncsnpp_other', size, 3)
    model = mutils.create_model(cfg).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
      out = model(x, tiny_labels(cfg, 2))
    assert out.shape == x.shape and torch.isfinite(out).all()
  cfg = tiny_config('ncsnpp_other')
  cfg.model.update(dict(fir=False, progressive_input='residual'))
  model = mutils.create_model(cfg).eval()
  with torch.no_grad():
    assert model(torch.randn(2, 3, 32, 32), tiny_labels(cfg, 2)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize('style', STYLES)
def test_backward_and_frozen_fourier_weights(style):
  torch.manual_seed(0)
  cfg = tiny_config(style, 16)
  cfg.model.attn_resolutions = (8,)
  model = mutils.create_model(cfg).train()
  x = torch.randn(2, 3, 16, 16)
  model(x, tiny_labels(cfg, 2)).square().mean().backward()
  for name, p in model.named_parameters():
    if p.requires_grad:
      assert p.grad is not None and torch.isfinite(p.grad).all(), name
  if cfg.model.embedding_type == 'fourier' and cfg.model.name == 'ncsnpp':
    fourier = model.all_modules[0]
    assert not fourier.W.requires_grad and fourier.W.grad is None


@pytest.mark.parametrize('style', STYLES)
def test_float64(style):
  cfg = tiny_config(style, 16)
  cfg.model.attn_resolutions = (8,)
  model = mutils.create_model(cfg).double().eval()
  x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
  with torch.no_grad():
    out = model(x, tiny_labels(cfg, 2).double())
  assert out.dtype == torch.float64 and out.shape == x.shape


@pytest.mark.parametrize('style', STYLES)
def test_sigmas_buffer_and_group_norms(style):
  cfg = tiny_config(style, 16)
  model = mutils.create_model(cfg)
  assert isinstance(model, ddpm.DDPM if style == 'ddpm' else ncsnpp.NCSNpp)
  assert model.sigmas.dtype == torch.float64
  assert 'sigmas' in model.state_dict() and next(iter(model.state_dict())) == 'sigmas'
  torch.testing.assert_close(model.sigmas, torch.tensor(mutils.get_sigmas(cfg)), rtol=0, atol=0)
  norms = [mod for mod in model.modules() if isinstance(mod, torch.nn.GroupNorm)]
  assert norms
  for norm in norms:
    expected = 32 if style == 'ddpm' else min(norm.num_channels // 4, 32)
    assert norm.num_groups == expected and norm.eps == 1e-6


def _twin(cfg, **changes):
  """A model built from ``cfg`` and one built with ``config.<section>.<key>`` changes, sharing weights."""
  torch.manual_seed(0)
  a = mutils.create_model(cfg).eval()
  cfg2 = copy.deepcopy(cfg)
  for dotted, value in changes.items():
    section, key = dotted.split('__')
    cfg2[section][key] = value
  b = mutils.create_model(cfg2).eval()
  b.load_state_dict(a.state_dict())
  return a, b


def test_scale_by_sigma_fourier_divides_by_the_label():
  cfg = tiny_config('ncsnpp_ve', 16)
  scaled, plain = _twin(cfg, model__scale_by_sigma=False)
  x, sigma = torch.randn(3, 3, 16, 16), torch.tensor([0.05, 1., 20.])
  with torch.no_grad():
    torch.testing.assert_close(scaled(x, sigma), plain(x, sigma) / sigma[:, None, None, None])


@pytest.mark.parametrize('style', ['ddpmpp_vp', 'ddpm'])
def test_scale_by_sigma_positional_uses_sigma_table(style):
  cfg = tiny_config(style, 16)
  plain, scaled = _twin(cfg, model__scale_by_sigma=True)
  x, idx = torch.randn(3, 3, 16, 16), torch.tensor([0, 7, 99])
  with torch.no_grad():
    expected = plain(x, idx) / plain.sigmas[idx].float()[:, None, None, None]
    out = scaled(x, idx)
  assert out.dtype == torch.float32
  torch.testing.assert_close(out, expected)


def test_positional_labels_beyond_num_scales_without_sigma_scaling():
  cfg = tiny_config('ddpmpp_vp', 16)
  cfg.model.num_scales = 10  # labels t*999 exceed the σ table, which is unused here
  model = mutils.create_model(cfg).eval()
  with torch.no_grad():
    assert torch.isfinite(model(torch.randn(2, 3, 16, 16), torch.tensor([500., 999.]))).all()


@pytest.mark.parametrize('style', ['ncsnpp_ve', 'ddpmpp_vp', 'ddpm'])
def test_uncentred_data_is_mapped_to_minus_one_one(style):
  cfg = tiny_config(style, 16)
  cfg.data.centered = True
  centred, uncentred = _twin(cfg, data__centered=False)
  x, labels = torch.rand(2, 3, 16, 16), tiny_labels(cfg, 2)
  with torch.no_grad():
    torch.testing.assert_close(uncentred(x, labels), centred(2 * x - 1, labels))


def test_unconditional_models():
  for style in ('ncsnpp_ve', 'ddpmpp_vp', 'ddpm'):
    cfg = tiny_config(style, 16)
    cfg.model.conditional = False
    model = mutils.create_model(cfg).eval()
    assert not any(isinstance(mod, torch.nn.Linear) for mod in model.all_modules)
    with torch.no_grad():
      out = model(torch.randn(2, 3, 16, 16), tiny_labels(cfg, 2))
    assert out.shape == (2, 3, 16, 16)


# ----------------------------------------------------------------------------------------------
# Refusals.

@pytest.mark.parametrize('key,value,match', [
  ('resblock_type', 'resnet', r"config\.model\.resblock_type 'resnet'; valid: ddpm, biggan"),
  ('progressive', 'skip', r"config\.model\.progressive 'skip'; valid: none, output_skip, residual"),
  ('progressive_input', 'output_skip', r"config\.model\.progressive_input 'output_skip'; valid: none, input_skip, "
                                       r"residual"),
  ('progressive_combine', 'mean', r"config\.model\.progressive_combine 'mean'; valid: sum, cat"),
  ('embedding_type', 'learned', r"config\.model\.embedding_type 'learned'; valid: fourier, positional"),
  ('nonlinearity', 'gelu', r"config\.model\.nonlinearity 'gelu'; valid: elu, relu, lrelu, swish"),
  ('attention_type', 'flash', r"config\.model\.attention_type 'flash'; valid: ddpm"),
])
def test_ncsnpp_rejects_unknown_options(key, value, match):
  cfg = tiny_config('ncsnpp_ve')
  cfg.model[key] = value
  with pytest.raises(ValueError, match=match):
    mutils.create_model(cfg)


@pytest.mark.parametrize('style', ['ncsnpp_ve', 'ddpm'])
def test_rejects_image_size_not_divisible(style):
  cfg = tiny_config(style, 30)  # 3 levels need a multiple of 4
  with pytest.raises(ValueError, match=r'image_size=30 must be divisible by 2\*\*\(len\(config\.model\.ch_mult\) '
                                       r'- 1\) = 4'):
    mutils.create_model(cfg)


def test_ddpm_rejects_nf_not_multiple_of_32():
  cfg = tiny_config('ddpm')
  cfg.model.nf = 16
  with pytest.raises(ValueError, match=r'config\.model\.nf=16 must be a multiple of 32'):
    mutils.create_model(cfg)
  cfg.model.nf = 64
  cfg.model.nonlinearity = 'tanh'
  with pytest.raises(ValueError, match=r'config\.model\.nonlinearity'):
    mutils.create_model(cfg)


def test_fourier_embedding_needs_continuous_training():
  cfg = tiny_config('ncsnpp_ve')
  cfg.training.continuous = False
  with pytest.raises(ValueError, match=r"embedding_type='fourier'.*config\.training\.continuous"):
    mutils.create_model(cfg)


def test_registry():
  assert mutils.get_model('ncsnpp') is ncsnpp.NCSNpp
  assert mutils.get_model('ddpm') is ddpm.DDPM


# ----------------------------------------------------------------------------------------------
# CUDA.

@pytest.mark.parametrize('style', STYLES)
def test_cuda_matches_cpu(style):
  if not torch.cuda.is_available():
    pytest.skip('CUDA is not available')
  torch.manual_seed(0)
  cfg = tiny_config(style, 32)
  model = mutils.create_model(cfg).eval()
  x, labels = torch.randn(2, 3, 32, 32), tiny_labels(cfg, 2)
  with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
    cpu = model(x, labels)
    gpu = model.cuda()(x.cuda(), labels.cuda())
  assert gpu.device.type == 'cuda' and gpu.shape == x.shape
  assert _rel_err(gpu.cpu(), cpu) <= 1e-4
