"""Class-conditional score networks (``model.class_conditional``): the label changes the output, the null label
is the unconditional branch of classifier-free guidance, unconditional networks and checkpoints are unchanged,
mismatched checkpoints and bad labels are refused with one line, and conditional training runs on the toy."""
import json
import os

import pytest
import torch

import conditioning
import datasets
import losses
import run_lib
import sampling
import sde_lib
import utils
from evaluation import run as eval_run
from evaluation import unlearning_ratio as ur_lib
from models import utils as mutils
from test_models_ncsnpp_ddpm import tiny_config, tiny_labels
from toy_configs import tiny_toy_config

STYLES = ('ncsnpp_ve', 'ddpmpp_vp', 'ddpm', 'mlp')


def conditional(config, k=3):
  config.model.class_conditional, config.model.num_classes = True, k
  return config


def build(style, cond=True, seed=0):
  cfg = tiny_toy_config() if style == 'mlp' else tiny_config(style, size=8, channels=1)
  if cond:
    conditional(cfg)
  torch.manual_seed(seed)
  return cfg, mutils.create_model(cfg).eval()


def inputs(style, cfg, b=4):
  g = torch.Generator().manual_seed(1)
  x = torch.randn((b, 2) if style == 'mlp' else (b, 1, 8, 8), generator=g)
  t = sde_lib.get_sde(cfg).model_labels(torch.linspace(0.2, 0.8, b), True) if style == 'mlp' else tiny_labels(cfg, b)
  return x, t


@pytest.mark.parametrize('style', STYLES)
def test_the_label_changes_the_output_and_none_is_the_null_label(style):
  cfg, model = build(style)
  x, t = inputs(style, cfg)
  with torch.no_grad():
    # weights moved off their initialisation (init_scale = 0 puts the blocks' last layers at ~0 there)
    g = torch.Generator().manual_seed(2)
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))
    outs = [model(x, t, torch.full((4,), c)) for c in range(4)]   # 3 = the null label
    plain = model(x, t)
  for a in range(4):
    for b in range(a + 1, 4):
      assert (outs[a] - outs[b]).abs().max() > 1e-3 * outs[a].abs().max(), (a, b)
  torch.testing.assert_close(plain, outs[3], rtol=0, atol=0)


@pytest.mark.parametrize('style', STYLES)
def test_unconditional_networks_are_unchanged(style):
  """No new state-dict key; the conditional network's other weights are drawn exactly as the unconditional's."""
  _, plain = build(style, cond=False)
  _, cond = build(style, cond=True)
  a, b = plain.state_dict(), cond.state_dict()
  assert set(b) - set(a) == {'label_embedding.weight'} and set(a) <= set(b)
  assert b['label_embedding.weight'].shape[0] == 4   # 3 classes + the null label
  for k in a:
    torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
  with pytest.raises(ValueError, match='not class-conditional'):
    plain(*inputs(style, build(style, cond=False)[0]), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize('w', [0., 1., 2.5])
def test_guidance_mixes_the_branches_and_scale_0_is_the_unconditional_branch(w):
  cfg, model = build('ddpmpp_vp')
  sde = sde_lib.get_sde(cfg)
  x, _ = inputs('ddpmpp_vp', cfg)
  t = torch.linspace(0.2, 0.8, 4)
  y = torch.tensor([0, 1, 2, 1])
  with torch.no_grad():
    guided = mutils.get_score_fn(sde, model, continuous=True, class_labels=y, guidance=w)(x, t)
    uncond = mutils.get_score_fn(sde, model, continuous=True)(x, t)            # no labels: the null label
    cond = mutils.get_score_fn(sde, model, continuous=True, class_labels=y)(x, t)
  torch.testing.assert_close(guided, uncond + w * (cond - uncond), rtol=1e-5, atol=1e-5)
  if w == 0.:
    torch.testing.assert_close(guided, uncond, rtol=0, atol=0)


def test_official_score_fn_signature_still_works_for_unconditional_models():
  cfg, model = build('ddpmpp_vp', cond=False)
  sde = sde_lib.get_sde(cfg)
  x, _ = inputs('ddpmpp_vp', cfg)
  out = mutils.get_score_fn(sde, model, False, True)(x, torch.full((4,), 0.5))
  assert out.shape == x.shape
  with pytest.raises(ValueError, match='not class-conditional'):
    mutils.get_score_fn(sde, model, False, True, class_labels=torch.zeros(4, dtype=torch.long))


def test_checkpoints_of_the_other_kind_are_refused_with_one_line(tmp_path):
  cfg_c, cond = build('mlp')
  cfg_u, plain = build('mlp', cond=False)
  for model, other, pattern in ((cond, plain, 'class-conditional checkpoint .3 classes. but the config is '
                                 'unconditional'),
                                (plain, cond, 'unconditional checkpoint but config.model.class_conditional=True')):
    with pytest.raises(utils.CheckpointError, match=pattern) as e:
      utils.load_model_state(other, model.state_dict(), 'ckpt.pth')
    assert '\n' not in str(e.value)
  _, five = build('mlp', cond=False)
  five = mutils.create_model(conditional(tiny_toy_config(), 5))
  with pytest.raises(utils.CheckpointError, match='trained for 3 classes but config.model.num_classes=5'):
    utils.load_model_state(five, cond.state_dict(), 'ckpt.pth')


def test_bad_settings_and_labels_are_refused():
  cfg = tiny_toy_config()
  cfg.model.class_conditional = True
  with pytest.raises(ValueError, match='num_classes >= 2'):
    conditioning.num_classes(cfg)
  conditional(cfg)
  names = ['left', 'centre', 'right']
  assert conditioning.sampling_labels(cfg, 5, class_names=names).tolist() == [0, 1, 2, 0, 1]
  cfg.sampling.labels = 'centre,0'
  assert conditioning.sampling_labels(cfg, 5, start=1, class_names=names).tolist() == [0, 1, 0, 1, 0]
  for bad, pattern in (('3', 'out of range 0..2'), ('middle', "unknown class 'middle'"), (',', 'names no class')):
    cfg.sampling.labels = bad
    with pytest.raises(ValueError, match=pattern):
      conditioning.sampling_labels(cfg, 2, class_names=names)
  with pytest.raises(ValueError, match='out of range'):
    conditioning.check_labels(torch.tensor([0, 4]), 3)
  plain = tiny_toy_config()
  for key, value in (('labels', '1'), ('guidance', 2.)):
    plain.sampling[key] = value
    with pytest.raises(ValueError, match='apply to class-conditional models'):
      sampling.get_sampling_fn(plain, sde_lib.get_sde(plain), (2, 2), lambda x: x)
    plain.sampling.labels, plain.sampling.guidance = '', 1.
  cfg.sampling.labels, cfg.sampling.guidance = '', -1.
  with pytest.raises(ValueError, match='guidance must be >= 0'):
    sampling.get_sampling_fn(cfg, sde_lib.get_sde(cfg), (2, 2), lambda x: x)
  cfg.sampling.guidance = 1.
  # a class-conditional config on data without class labels, or with another number of classes
  data = datasets.get_dataset(cfg)

  class Attributes:
    label_type, name, num_classes = 'attribute', 'CELEBA', 40
  with pytest.raises(ValueError, match='needs class labels, but CELEBA has attribute labels'):
    conditioning.check_data(cfg, Attributes())
  with pytest.raises(ValueError, match='num_classes=4 but GMM2D has 3 classes'):
    conditioning.check_data(conditional(tiny_toy_config(), 4), data)
  cfg = conditional(tiny_toy_config())
  cfg.model.name = 'ncsnv2_64'
  with pytest.raises(ValueError, match="model 'ncsnv2_64' has no label embedding"):
    mutils.create_model(cfg)


def test_label_dropout_replaces_a_share_with_the_null_label():
  y = torch.zeros(20000, dtype=torch.long)
  out = conditioning.drop_labels(y, 0.25, 7, torch.Generator().manual_seed(0))
  assert set(out.unique().tolist()) == {0, 7}
  assert (out == 7).float().mean().item() == pytest.approx(0.25, abs=0.01)
  assert conditioning.drop_labels(y, 0., 7) is y


def test_the_loss_passes_the_class_labels():
  cfg, model = build('mlp')
  sde = sde_lib.get_sde(cfg)
  loss_fn = losses.get_loss_fn(sde, False, True, True, False)
  x = torch.randn(6, 2)
  losses_by_label = [loss_fn(model, (x, torch.full((6,), c)), torch.Generator().manual_seed(0)) for c in range(4)]
  assert not torch.allclose(losses_by_label[0], losses_by_label[1])
  torch.testing.assert_close(loss_fn(model, x, torch.Generator().manual_seed(0)), losses_by_label[3])


def test_conditional_training_and_sampling_on_the_toy(tmp_path):
  cfg = conditional(tiny_toy_config(n_iters=20))
  cfg.training.snapshot_sampling = True
  cfg.training.snapshot_num_samples = 6
  cfg.sampling.labels = 'right'
  cfg.model.num_scales = 10
  w = str(tmp_path / 'cond')
  state = run_lib.train(cfg, w, 'standard', progress=False)
  assert state['step'] == 20
  samples = torch.load(os.path.join(w, 'samples', 'iter_20', 'sample.pt'))
  assert samples.shape == (6, 2) and torch.isfinite(samples).all()
  # the speed engine passes the labels too (bf16 autocast on the CPU)
  fast = conditional(tiny_toy_config(n_iters=3))
  fast.training.precision = 'bf16'
  assert run_lib.train(fast, str(tmp_path / 'bf16'), 'standard', progress=False)['step'] == 3
  # a conditional checkpoint fine-tuned from an unconditional config is refused before anything is written
  plain = tiny_toy_config(n_iters=2)
  plain.training.pretrained = os.path.join(w, 'checkpoints', 'checkpoint_1.pth')
  with pytest.raises(utils.CheckpointError, match='class-conditional checkpoint'):
    run_lib.train(plain, str(tmp_path / 'ft'), 'finetune', finetune=True, progress=False)
  assert not os.path.exists(tmp_path / 'ft')
  # methods that do not train conditional networks refuse them
  with pytest.raises(run_lib.TrainingError, match='--task obtuse does not train class-conditional'):
    run_lib.train(conditional(tiny_toy_config(n_iters=2)), str(tmp_path / 'ob'), 'obtuse', progress=False)
  # the sampler asks for the given classes; unconditional models refuse labels
  sde = sde_lib.get_sde(cfg)
  model, _ = run_lib.load_ema_model(cfg, os.path.join(w, 'checkpoints', 'checkpoint_1.pth'), 'cpu')
  fn = sampling.get_sampling_fn(cfg, sde, (4, 2), lambda x: x)
  a, _ = fn(model, generator=torch.Generator().manual_seed(0), labels=torch.tensor([0, 0, 0, 0]))
  b, _ = fn(model, generator=torch.Generator().manual_seed(0), labels=torch.tensor([2, 2, 2, 2]))
  assert not torch.allclose(a, b)
  with pytest.raises(ValueError, match='out of range'):
    fn(model, labels=torch.tensor([0, 1, 2, 5]))
  _, plain_model = build('mlp', cond=False)
  with pytest.raises(ValueError, match='not class-conditional'):
    fn(plain_model, labels=torch.tensor([0, 1, 2, 0]))
  # --mode eval: the Unlearning Ratio per requested class (exact classifier of the toy)
  cfg.sampling.labels = ''
  cfg.eval.enable_bpd, cfg.eval.num_samples, cfg.eval.batch_size = False, 30, 16
  res = eval_run.evaluate(cfg, w, 'standard', progress=False)
  per = res['unlearning_ratio_per_label']
  assert [per['per_label'][n]['num_samples'] for n in ('left', 'centre', 'right')] == [10, 10, 10]
  assert per['forget']['num_samples'] == 10 and per['retain']['num_samples'] == 20
  assert per['forget']['unlearning_accuracy'] == pytest.approx(100. - per['per_label']['centre']['percent'])
  assert res['sampler']['guidance'] == 1.
  assert 'asked for a forget class' in eval_run.markdown(res)
  on_disk = json.loads((tmp_path / 'cond' / 'eval' / 'results.json').read_text())
  assert on_disk['unlearning_ratio_per_label'] == json.loads(json.dumps(per))


def test_per_label_unlearning_ratio_by_hand():
  names = ['a', 'b', 'c']
  pred = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
  req = torch.tensor([0, 0, 1, 1, 0, 2, 1, 1])
  out = ur_lib.per_label(pred, req, [1], names)
  b = out['per_label']['b']
  assert (b['num_samples'], b['num_assigned'], b['forget']) == (4, 2, True)
  assert b['percent'] == 50. and b['unlearning_accuracy'] == 50.
  assert b['histogram'] == {'a': 1, 'b': 2, 'c': 1}
  a = out['per_label']['a']
  assert a['percent'] == pytest.approx(200. / 3) and 'unlearning_accuracy' not in a
  assert out['forget']['percent'] == 50. and out['retain']['num_samples'] == 4 and out['retain']['percent'] == 75.
  lo, hi = out['forget']['ci95']
  assert lo < 50. < hi
  with pytest.raises(ValueError, match='out of range'):
    ur_lib.per_label(pred, req + 1, [1], names)
