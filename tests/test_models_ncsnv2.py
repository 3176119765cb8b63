"""Tests of the NCSN / NCSNv2 RefineNets (models/ncsnv2.py, ncsnv2_layers.py, normalization.py)."""
import pytest
import torch
import torch.nn.functional as F

import sde_lib
from configs.default_configs import get_base_config
from models import normalization, utils
from models import ncsnv2  # noqa: F401  (registers the architectures)

NAMES = ('ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256', 'ncsn')


def make_config(name='ncsnv2_64', image_size=32, channels=3, nf=4, num_scales=10, centered=False,
                normalization_name='InstanceNorm++', nonlinearity='elu'):
  config = get_base_config()
  config.training.sde = 'vesde'
  config.training.continuous = False
  config.data.image_size = image_size
  config.data.num_channels = channels
  config.data.centered = centered
  config.model.name = name
  config.model.nf = nf
  config.model.num_scales = num_scales
  config.model.sigma_min = 0.01
  config.model.sigma_max = 50.
  config.model.normalization = normalization_name
  config.model.nonlinearity = nonlinearity
  config.model.scale_by_sigma = name != 'ncsn'
  return config


def build(seed=0, **kwargs):
  torch.manual_seed(seed)
  return utils.create_model(make_config(**kwargs))


def test_registered():
  assert set(NAMES) <= set(utils.registered_models())


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('image_size', (28, 32, 64))
@pytest.mark.parametrize('channels', (1, 3))
def test_output_shape(name, image_size, channels):
  if name == 'ncsnv2_256' and image_size == 28:
    # Three mean-pool halvings: 28 -> 14 -> 7 -> (odd) cannot be pooled; refused at construction.
    with pytest.raises(ValueError, match='image_size'):
      build(name=name, image_size=image_size, channels=channels)
    return
  model = build(name=name, image_size=image_size, channels=channels)
  x = torch.rand(2, channels, image_size, image_size)
  labels = torch.tensor([0, 9])
  with torch.no_grad():
    out = model(x, labels)
  assert out.shape == x.shape
  assert out.dtype == torch.float32
  assert torch.isfinite(out).all()


@pytest.mark.parametrize('name,image_size', [('ncsnv2_64', 31), ('ncsnv2_128', 30), ('ncsnv2_256', 36)])
def test_unsupported_image_size_raises(name, image_size):
  with pytest.raises(ValueError, match='image_size'):
    build(name=name, image_size=image_size)


# Hand count of state-dict entries with InstanceNorm++ (alpha, gamma, beta: 3 tensors per norm):
#   residual block: conv1 (w, b) 2 + normalize2 3 + conv2 2 + normalize1 3 = 10, +2 with a shortcut conv;
#   a stage = 2 blocks, the first with a shortcut when it resamples: res1 = 20, other stages 22;
#   RCU with n blocks x 2 stages of bias-free convs: 2n; CRP (2 bias-free convs): 2; MSF (2 convs w, b): 4;
#   RefineBlock: start (1 input) = 4 + 2 + 2 = 8; middle = 2*4 + 2 + 4 + 2 = 16; end = 2*4 + 6 + 4 + 2 = 20;
#   network: sigmas 1 + begin_conv 2 + normalizer 3 + end_conv 2 = 8.
#   ncsnv2_64:  8 + (20 + 3*22) + (8 + 2*16 + 20) = 8 + 86 + 60 = 154
#   ncsnv2_128: 8 + (20 + 4*22) + (8 + 3*16 + 20) = 8 + 108 + 76 = 192
#   ncsnv2_256: 8 + (20 + 5*22) + (8 + 4*16 + 20) = 8 + 130 + 92 = 230
# NCSN (conditional norms: one `embed.weight` each, no sigmas buffer):
#   residual block 2+1+2+1 = 6 (+2 shortcut): 12 + 3*14 = 54; conditional RCU n blocks: 4n;
#   CRP 2 convs + 2 norms = 4; MSF 2*(w, b) + 2 norms = 6;
#   RefineBlocks: start 8 + 4 + 4 = 16; middle 16 + 4 + 6 + 4 = 30; end 16 + 12 + 6 + 4 = 38: 114;
#   network: begin_conv 2 + normalizer 1 + end_conv 2 = 5.  Total 5 + 54 + 114 = 173.
@pytest.mark.parametrize('name,count', [('ncsnv2_64', 154), ('ncsnv2_128', 192), ('ncsnv2_256', 230),
                                        ('ncsn', 173)])
def test_state_dict_count(name, count):
  assert len(build(name=name).state_dict()) == count


def test_state_dict_keys_ncsnv2_64():
  nf, channels, n = 4, 3, 10
  sd = build(name='ncsnv2_64', nf=nf, channels=channels, num_scales=n).state_dict()
  expected = {
    'sigmas': (n,),
    'begin_conv.weight': (nf, channels, 3, 3),
    'end_conv.bias': (channels,),
    'normalizer.alpha': (nf,),
    'normalizer.gamma': (nf,),
    'normalizer.beta': (nf,),
    'res1.0.normalize1.beta': (nf,),
    'res1.1.conv2.weight': (nf, nf, 3, 3),
    'res2.0.conv1.weight': (nf, nf, 3, 3),               # down block: conv1 keeps the channels
    'res2.0.normalize2.alpha': (nf,),
    'res2.0.conv2.conv.weight': (2 * nf, nf, 3, 3),      # ConvMeanPool
    'res2.0.shortcut.conv.weight': (2 * nf, nf, 1, 1),   # 1x1 ConvMeanPool shortcut
    'res3.0.shortcut.weight': (2 * nf, 2 * nf, 3, 3),    # dilated 3x3 shortcut
    'res4.1.normalize1.gamma': (2 * nf,),
    'refine1.adapt_convs.0.2_2_conv.weight': (2 * nf, 2 * nf, 3, 3),
    'refine1.output_convs.1_2_conv.weight': (2 * nf, 2 * nf, 3, 3),
    'refine1.crp.convs.1.weight': (2 * nf, 2 * nf, 3, 3),
    'refine3.msf.convs.1.weight': (nf, 2 * nf, 3, 3),
    'refine3.msf.convs.1.bias': (nf,),
    'refine4.adapt_convs.1.1_1_conv.weight': (nf, nf, 3, 3),
    'refine4.output_convs.3_2_conv.weight': (nf, nf, 3, 3),
  }
  for key, shape in expected.items():
    assert key in sd, key
    assert tuple(sd[key].shape) == shape, key
  for absent in ('res1.0.shortcut.weight', 'res2.1.shortcut.weight', 'refine1.msf.convs.0.weight',
                 'refine1.adapt_convs.0.1_1_conv.bias', 'refine2.crp.convs.0.bias',
                 'refine3.output_convs.2_1_conv.weight'):
    assert absent not in sd, absent


def test_state_dict_keys_ncsn():
  nf, n = 4, 10
  sd = build(name='ncsn', nf=nf, num_scales=n).state_dict()
  assert 'sigmas' not in sd
  expected = {
    'normalizer.embed.weight': (n, 3 * nf),
    'res2.0.normalize1.embed.weight': (n, 3 * nf),
    'refine1.adapt_convs.0.1_1_norm.embed.weight': (n, 6 * nf),
    'refine2.crp.norms.1.embed.weight': (n, 6 * nf),
    'refine3.msf.norms.0.embed.weight': (n, 6 * nf),
    'refine4.output_convs.3_2_norm.embed.weight': (n, 3 * nf),
  }
  for key, shape in expected.items():
    assert tuple(sd[key].shape) == shape, key


def test_parameter_order_matches_original():
  """Optimiser and EMA state are lists in ``parameters()`` order, so the creation order matters."""
  names = [k for k, _ in build(name='ncsnv2_256').named_parameters()]
  assert names[:10] == ['begin_conv.weight', 'begin_conv.bias', 'normalizer.alpha', 'normalizer.gamma',
                        'normalizer.beta', 'end_conv.weight', 'end_conv.bias', 'res1.0.conv1.weight',
                        'res1.0.conv1.bias', 'res1.0.normalize2.alpha']
  tops = list(dict.fromkeys(k.split('.')[0] for k in names))
  assert tops == ['begin_conv', 'normalizer', 'end_conv', 'res1', 'res2', 'res3', 'res31', 'res4', 'res5',
                  'refine1', 'refine2', 'refine3', 'refine31', 'refine4', 'refine5']
  block = list(dict.fromkeys(k.split('.')[2] for k in names if k.startswith('res2.0.')))
  assert block == ['conv1', 'normalize2', 'conv2', 'shortcut', 'normalize1']
  refine = list(dict.fromkeys(k.split('.')[1] for k in names if k.startswith('refine2.')))
  assert refine == ['adapt_convs', 'output_convs', 'msf', 'crp']


def test_state_dict_roundtrip_with_float64_sigmas():
  src, dst = build(seed=0), build(seed=1)
  sd = src.state_dict()
  sd['sigmas'] = sd['sigmas'].double()   # the original code keeps the buffer in float64
  dst.load_state_dict(sd)
  assert dst.sigmas.dtype == torch.float32
  x, labels = torch.rand(2, 3, 32, 32), torch.tensor([1, 4])
  with torch.no_grad():
    torch.testing.assert_close(dst(x, labels), src(x, labels))


def test_sigmas_buffer_descending():
  config = make_config(num_scales=7)
  model = utils.create_model(config)
  assert 'sigmas' in dict(model.named_buffers())
  assert not any(p is model.sigmas for p in model.parameters())
  torch.testing.assert_close(model.sigmas, torch.tensor(utils.get_sigmas(config), dtype=torch.float32))
  assert model.sigmas[0].item() == pytest.approx(50.)
  assert model.sigmas[-1].item() == pytest.approx(0.01)


@pytest.mark.parametrize('name', ('ncsnv2_64', 'ncsnv2_128'))
def test_output_scales_as_inverse_sigma(name):
  model = build(name=name).eval()
  x, labels = torch.rand(3, 3, 32, 32), torch.tensor([0, 5, 9])
  with torch.no_grad():
    out = model(x, labels)
    model.sigmas.mul_(4.)
    out_scaled = model(x, labels)
  torch.testing.assert_close(out_scaled, out / 4., rtol=1e-5, atol=1e-6)


def test_ncsnv2_output_times_sigma_is_label_independent():
  """NCSNv2's body is unconditional: out(x, i) * sigma_i is the same for every i."""
  model = build().eval()
  x = torch.rand(1, 3, 32, 32).expand(4, -1, -1, -1)
  labels = torch.tensor([0, 3, 6, 9])
  with torch.no_grad():
    h = model(x, labels) * model.sigmas[labels].view(-1, 1, 1, 1)
  for i in range(1, 4):
    torch.testing.assert_close(h[i], h[0], rtol=1e-4, atol=1e-4)


def test_ncsn_is_label_conditional_and_unscaled():
  model = build(name='ncsn').eval()
  x = torch.rand(1, 3, 32, 32).expand(2, -1, -1, -1)
  with torch.no_grad():
    out = model(x, torch.tensor([0, 9]))
  assert not torch.allclose(out[0], out[1])
  assert not hasattr(model, 'sigmas')


@pytest.mark.parametrize('name', ('ncsnv2_64', 'ncsn'))
def test_uncentred_input_is_mapped_to_minus_one_one(name):
  uncentred = build(name=name, centered=False)
  centred = build(name=name, centered=True)
  centred.load_state_dict(uncentred.state_dict())
  x, labels = torch.rand(2, 3, 32, 32), torch.tensor([2, 7])
  with torch.no_grad():
    torch.testing.assert_close(uncentred(x, labels), centred(2. * x - 1., labels))


@pytest.mark.parametrize('name', ('ncsnv2_64', 'ncsn'))
def test_gradient_reaches_every_parameter(name):
  model = build(name=name, image_size=28, channels=1).train()
  x = torch.rand(2, 1, 28, 28)
  out = model(x, torch.tensor([1, 8]))
  (out * torch.randn_like(out)).sum().backward()
  for key, p in model.named_parameters():
    assert p.grad is not None, key
    assert torch.isfinite(p.grad).all(), key
    assert p.grad.abs().sum() > 0, key


def test_score_fn_with_discrete_vesde():
  config = make_config(num_scales=10)
  model = utils.create_model(config)
  sde = sde_lib.get_sde(config)
  x, t = torch.rand(2, 3, 32, 32), torch.tensor([1., 0.5])
  score = utils.get_score_fn(sde, model, continuous=False)(x, t)
  assert score.shape == x.shape
  with torch.no_grad():
    # t = 1 is sigma_max (index 0); t = 0.5 is index round(0.5 * 9) = 4 (round half to even)
    torch.testing.assert_close(score, model(x, torch.tensor([0, 4])))


def test_float_labels_raise():
  model = build()
  with pytest.raises(ValueError, match='integer noise-level indices'):
    model(torch.rand(2, 3, 32, 32), torch.tensor([0.5, 1.0]))


def test_unknown_normalization_raises():
  with pytest.raises(ValueError, match=r'valid: .*InstanceNorm\+\+'):
    build(normalization_name='BatchNorm')
  with pytest.raises(ValueError, match=r'valid: .*InstanceNorm\+\+'):
    build(name='ncsn', normalization_name='GroupNorm')   # no conditional GroupNorm


def test_unknown_nonlinearity_raises():
  with pytest.raises(ValueError, match=r'valid: .*elu'):
    build(nonlinearity='gelu')


def test_unknown_interpolation_raises_and_nearest_works():
  config = make_config()
  config.model.interpolation = 'area'
  with pytest.raises(ValueError, match='bilinear'):
    utils.create_model(config)
  config.model.interpolation = 'nearest'
  model = utils.create_model(config)
  with torch.no_grad():
    assert model(torch.rand(1, 3, 32, 32), torch.tensor([3])).shape == (1, 3, 32, 32)


@pytest.mark.parametrize('name,norm', [('ncsnv2_64', 'InstanceNorm'), ('ncsnv2_64', 'VarianceNorm'),
                                       ('ncsnv2_64', 'GroupNorm'), ('ncsn', 'InstanceNorm'),
                                       ('ncsn', 'VarianceNorm')])
@pytest.mark.parametrize('nonlinearity', ('relu', 'swish'))
def test_other_normalizations_and_activations(name, norm, nonlinearity):
  model = build(name=name, nf=8, normalization_name=norm, nonlinearity=nonlinearity)
  with torch.no_grad():
    out = model(torch.rand(2, 3, 32, 32), torch.tensor([0, 9]))
  assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_instance_norm_plus_statistics():
  torch.manual_seed(0)
  layer = normalization.InstanceNorm2dPlus(6)
  with torch.no_grad():
    layer.beta.normal_()
  x = torch.randn(3, 6, 8, 8) * 2. + torch.randn(3, 6, 1, 1)
  with torch.no_grad():
    out = layer(x)
  m = normalization.standardised_channel_means(x)
  # IN(x) has zero spatial mean and unit spatial (biased) std per channel.
  expected_mean = layer.gamma * layer.alpha * m + layer.beta
  torch.testing.assert_close(out.mean(dim=(2, 3)), expected_mean.detach(), rtol=1e-4, atol=1e-4)
  expected_std = layer.gamma.abs().expand(3, -1)
  torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), expected_std.detach(), rtol=1e-3, atol=1e-3)
  with torch.no_grad():
    layer.alpha.zero_()
    layer.gamma.fill_(1.)
    layer.beta.zero_()
    torch.testing.assert_close(layer(x), F.instance_norm(x, eps=1e-5))


def test_conditional_instance_norm_plus_picks_label_rows():
  torch.manual_seed(0)
  c, k = 5, 4
  cond = normalization.ConditionalInstanceNorm2dPlus(c, k)
  with torch.no_grad():
    cond.embed.weight.normal_()
  plain = normalization.InstanceNorm2dPlus(c)
  x, y = torch.randn(3, c, 6, 6), torch.tensor([2, 0, 3])
  with torch.no_grad():
    out = cond(x, y)
    for b in range(3):
      gamma, alpha, beta = cond.embed.weight[y[b]].chunk(3)
      plain.gamma.copy_(gamma)
      plain.alpha.copy_(alpha)
      plain.beta.copy_(beta)
      # the channel-mean statistics are per sample, so one sample at a time matches
      torch.testing.assert_close(out[b:b + 1], plain(x[b:b + 1]))


def test_group_norm_group_count_divides():
  for c in (4, 8, 12, 40, 128, 200, 256, 7):
    g = normalization.group_count(c)
    assert c % g == 0 and 1 <= g <= 32


@pytest.mark.parametrize('name', ('ncsnv2_64', 'ncsn'))
def test_forward_on_device(name, device):
  """CPU and (when available) CUDA: output on the input's device, equal to the CPU model's."""
  model = utils.create_model(make_config(name=name), device=device)
  x = torch.rand(2, 3, 32, 32, device=device)
  labels = torch.tensor([0, 9], device=device)
  with torch.no_grad():
    out = model(x, labels)
  assert out.device.type == device.type and out.shape == x.shape
  cpu_model = utils.create_model(make_config(name=name))
  cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
  with torch.no_grad():
    torch.testing.assert_close(out.cpu(), cpu_model(x.cpu(), labels.cpu()), rtol=1e-3, atol=1e-3)
