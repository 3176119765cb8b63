"""Score Forgetting Distillation (``--task sfd``): the one-step generator, the score-identity loss, the class
remapping, refusals, resuming, and the forgetting target on a class-conditional 2-D mixture (one label per
component; the exact classifier): after distillation the generator asked for the forget component (centre)
produces the remapped one (right) and the retained components stay where they were, with no data read."""
import os

import pytest
import torch

import datasets
import run_lib
import sampling
import sde_lib
import utils
from evaluation import run as eval_run
from models import utils as mutils
from test_models_ncsnpp_ddpm import tiny_config
from toy_configs import tiny_toy_config
from unlearning import sfd


def conditional_toy(n_iters, width=64):
  c = tiny_toy_config(n_iters=n_iters, width=width, num_train=4000)
  c.model.class_conditional, c.model.num_classes = True, 3
  c.training.batch_size, c.training.label_dropout, c.training.snapshot_sampling = 256, 0., False
  return c


def sfd_config(teacher, n_iters):
  c = conditional_toy(n_iters)
  c.training.pretrained, c.training.batch_size = teacher, 128
  c.sfd.lr, c.model.ema_rate = 1e-3, 0.99     # the toy's scale: SFD's 1e-5 is for 50k-step image runs
  return c


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  """A class-conditional toy model: Standard training, 1,500 steps (about 10 s)."""
  w = str(tmp_path_factory.mktemp('sfd') / 'teacher')
  run_lib.train(conditional_toy(1500), w, 'standard', progress=False)
  return os.path.join(w, 'checkpoints', 'checkpoint_1.pth')


def test_remap_defaults_to_the_next_retained_class_and_refuses_bad_maps():
  assert sfd.parse_remap('', (1,), (0, 2), 3) == {1: 2}
  assert sfd.parse_remap('', (2,), (0, 1), 3) == {2: 0}                 # cyclic
  assert sfd.parse_remap('', (3, 4), (0, 1, 2, 5, 6), 7) == {3: 5, 4: 5}
  assert sfd.parse_remap('1:0', (1,), (0, 2), 3) == {1: 0}
  for bad, pattern in (('1:1', 'not a retained class'), ('0:2', 'not a forget class'), ('x', "'forget:retained'")):
    with pytest.raises(ValueError, match=pattern):
      sfd.parse_remap(bad, (1,), (0, 2), 3)


def test_sid_loss_by_hand_and_its_gradient():
  x_p, x_q = torch.tensor([[1., 2.]]), torch.tensor([[0., 1.]])
  x_g = torch.tensor([[0., 0.]], requires_grad=True)
  # d = (1, 1); (x_p − x_g) − 1.2 d = (−0.2, 0.8); Σ d·(…) = 0.6; ω = mean |x_p − x_g| = 1.5
  loss = sfd.sid_loss(x_p, x_q, x_g, 1.2)
  assert loss.item() == pytest.approx(0.6 / 1.5)
  loss.sum().backward()
  torch.testing.assert_close(x_g.grad, -(x_p - x_q) / 1.5)   # ω is a constant: ∇ = −(x̂_p − x̂_q)/ω


@pytest.mark.parametrize('style', ['mlp', 'ddpmpp_vp'])
def test_one_step_generator_shape_and_determinism(style):
  cfg = tiny_toy_config() if style == 'mlp' else tiny_config(style, size=8, channels=1)
  cfg.model.class_conditional, cfg.model.num_classes = True, 3
  torch.manual_seed(0)
  model = mutils.create_model(cfg).eval()
  sde = sde_lib.get_sde(cfg)
  shape = (5, 2) if style == 'mlp' else (5, 1, 8, 8)
  fn = sampling.get_one_step_sampling_fn(cfg, sde, shape, lambda x: x, 0.44)
  y = torch.tensor([0, 1, 2, 0, 1])
  a, nfe = fn(model, generator=torch.Generator().manual_seed(3), labels=y)
  b, _ = fn(model, generator=torch.Generator().manual_seed(3), labels=y)
  assert a.shape == shape and nfe == 1 and torch.isfinite(a).all()
  torch.testing.assert_close(a, b, rtol=0, atol=0)
  z = torch.randn(shape, generator=torch.Generator().manual_seed(4))
  c, _ = fn(model, z=z, labels=y)
  torch.testing.assert_close(c, sampling.one_step_generate(sde, model, z, 0.44, y), rtol=0, atol=0)
  with pytest.raises(ValueError, match='t_init'):
    sampling.get_one_step_sampling_fn(cfg, sde, shape, lambda x: x, 0.)
  cfg.sampling.guidance = 2.
  with pytest.raises(ValueError, match='guidance must be 1'):
    sampling.get_one_step_sampling_fn(cfg, sde, shape, lambda x: x, 0.44)


def test_refusals(tmp_path, teacher):
  plain = tiny_toy_config(n_iters=2)
  w = str(tmp_path / 'plain')
  run_lib.train(plain, w, 'standard', progress=False)
  unconditional = tiny_toy_config(n_iters=2)
  unconditional.training.pretrained = os.path.join(w, 'checkpoints', 'checkpoint_1.pth')
  with pytest.raises(ValueError, match='--task sfd distils a class-conditional network'):
    run_lib.train(unconditional, str(tmp_path / 'a'), 'sfd', finetune=True, progress=False)
  with pytest.raises(ValueError, match='distils a pretrained model: run it with --finetune'):
    run_lib.train(sfd_config(teacher, 2), str(tmp_path / 'b'), 'sfd', progress=False)
  bad = sfd_config(teacher, 2)
  bad.sfd.t_min, bad.sfd.t_max = 0.5, 0.2
  with pytest.raises(ValueError, match='sfd.t_min/t_max'):
    run_lib.train(bad, str(tmp_path / 'c'), 'sfd', finetune=True, progress=False)
  fast = sfd_config(teacher, 2)
  fast.training.precision = 'bf16'
  with pytest.raises(ValueError, match='--task sfd runs in one process in fp32 eager mode'):
    run_lib.train(fast, str(tmp_path / 'd'), 'sfd', finetune=True, progress=False)
  for name in 'abcd':
    assert not os.path.exists(tmp_path / name)


def test_resuming_gives_the_uninterrupted_run(tmp_path, teacher):
  whole = run_lib.train(sfd_config(teacher, 6), str(tmp_path / 'whole'), 'sfd', finetune=True, progress=False)
  cfg = sfd_config(teacher, 6)
  cfg.training.snapshot_freq_for_preemption = 3
  w = str(tmp_path / 'parts')
  cfg.training.n_iters = 3
  run_lib.train(cfg, w, 'sfd', finetune=True, progress=False)
  cfg.training.n_iters = 6
  parts = run_lib.train(cfg, w, 'sfd', finetune=True, progress=False)
  for a, b in zip(whole['model'].parameters(), parts['model'].parameters()):
    torch.testing.assert_close(a, b, rtol=0, atol=0)
  saved = utils.load_file(os.path.join(w, 'checkpoints-meta', 'checkpoint.pth'))
  assert saved['generator']['method'] == 'sfd' and 'sfd_fake_model' in saved['extra']


def test_sfd_forgets_the_centre_into_the_right_component_without_reading_data(tmp_path, teacher, monkeypatch):
  cfg = conditional_toy(1)
  cfg.eval.enable_bpd, cfg.eval.num_samples, cfg.eval.batch_size = False, 600, 600
  before = eval_run.evaluate(cfg, os.path.dirname(os.path.dirname(teacher)), 'standard', 'eval_sfd_test',
                             progress=False)['unlearning_ratio_per_label']['per_label']
  assert before['centre']['percent'] > 60.          # the teacher draws the centre when asked for it

  def no_data(*args, **kwargs):
    raise AssertionError('SFD read a data batch')
  monkeypatch.setattr(datasets, 'get_data_iterator', no_data)
  w = str(tmp_path / 'sfd')
  run_lib.train(sfd_config(teacher, 500), w, 'sfd', finetune=True, progress=False)
  monkeypatch.undo()

  cfg = sfd_config(teacher, 1)
  cfg.eval.enable_bpd, cfg.eval.num_samples, cfg.eval.batch_size = False, 600, 600
  res = eval_run.evaluate(cfg, w, 'sfd', progress=False, keep_samples=True)
  per = res['unlearning_ratio_per_label']
  assert res['sampler']['method'] == 'one_step' and res['sampler']['nfe_per_sample'] == 1
  centre = per['per_label']['centre']
  assert centre['histogram']['right'] >= 0.8 * centre['num_samples']      # the remapped component
  assert centre['unlearning_accuracy'] >= 80.
  y = torch.arange(600) % 3
  x = res['samples']
  for c, mean in ((0, (-2., -2.)), (2, (2., 2.))):                        # the retained components stay
    assert per['per_label'][['left', 'centre', 'right'][c]]['percent'] >= 80.
    torch.testing.assert_close(x[y == c].mean(0), torch.tensor(mean), atol=0.4, rtol=0)
    assert ((x[y == c].std(0) > 0.7) & (x[y == c].std(0) < 1.4)).all()
  # what needs a score model is refused for a generator checkpoint
  cfg.eval.enable_bpd = True
  with pytest.raises(eval_run.EvaluationError, match='one-step generator'):
    eval_run.evaluate(cfg, w, 'sfd', 'eval2', progress=False)
  from evaluation import relearn
  with pytest.raises(ValueError, match='one-step generator .sfd., not a score model: the relearning attack'):
    relearn.run_relearn(cfg, w, 'sfd', 'eval3', progress=False)
  assert not os.path.exists(os.path.join(w, 'eval3'))


def test_the_report_adds_unlearning_accuracy_and_nfe_rows():
  from evaluation import report as R

  def res(task, ua, nfe, wall):
    return {'task': task, 'dataset': 'MNIST5K', 'forget': ['3'], 'unlearning_ratio': {'percent': 1., 'ci95': [0., 2.]},
            'unlearning_ratio_per_label': {'forget': {'percent': 100. - ua, 'ci95': [100. - ua - 1, 100. - ua + 1],
                                                      'unlearning_accuracy': ua}},
            'sampler': {'method': 'x', 'nfe_per_sample': nfe}, 'compute': {'steps': 10, 'wall_seconds': wall}}
  table = R.build_table([res('standard', 10., 1000, 50.), res('sfd', 99., 1, 20.)])
  assert table.columns == ['Standard', 'SFD']
  rows = {r.metric: r for r in table.rows}
  assert [c.value for c in rows['unlearning_accuracy'].cells] == [10., 99.]
  assert (rows['unlearning_accuracy'].cells[1].lo, rows['unlearning_accuracy'].cells[1].hi) == (98., 100.)
  assert [c.value for c in rows['nfe'].cells] == [1000, 1]
  text = R.to_markdown(table)
  assert 'Unlearning accuracy (%) on forget-class requests' in text and 'Sampling NFE per sample' in text


def test_pseudo_labels_by_hand():
  retain = torch.tensor([1, 2])                              # class 0 is forgotten
  probs = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.02, 0.08]])
  assert sfd.pseudo_labels('amax', probs, retain).tolist() == [1, 2]   # the forget class never wins
  g = torch.Generator().manual_seed(0)
  many = torch.tensor([[0.6, 0.1, 0.3]]).repeat(20000, 1)
  drawn = sfd.pseudo_labels('prob', many, retain, g)
  assert set(drawn.unique().tolist()) == {1, 2}
  assert (drawn == 1).float().mean().item() == pytest.approx(0.25, abs=0.015)   # 0.1 / (0.1 + 0.3)
  assert sfd.pseudo_labels('prob', torch.tensor([[1., 0., 0.]]).repeat(4000, 1), retain, g).float().mean() \
      == pytest.approx(1.5, abs=0.05)                          # no retained mass: uniform over {1, 2}
  rand = sfd.pseudo_labels('rand', torch.zeros(20000, 3), retain, g)
  assert set(rand.unique().tolist()) == {1, 2} and (rand == 2).float().mean().item() == pytest.approx(0.5, abs=0.015)
  with pytest.raises(ValueError, match="sfd.pseudo_labels must be one of"):
    sfd.pseudo_labels('max', probs, retain)


def test_classifier_pseudo_labels_send_the_centre_to_the_outer_components(tmp_path, teacher):
  """SFD's ``amax`` option with the exact classifier: each forget sample's teacher class is the retained
  component that the fake network's estimate lies nearest; the generator's centre answers leave the centre
  for the outer components (here all for one of them: the labels follow the fake network, which follows the
  generator), and the retained components stay."""
  cfg = sfd_config(teacher, 500)
  cfg.sfd.pseudo_labels = 'amax'
  w = str(tmp_path / 'amax')
  run_lib.train(cfg, w, 'sfd', finetune=True, progress=False)
  cfg = sfd_config(teacher, 1)
  cfg.eval.enable_bpd, cfg.eval.num_samples, cfg.eval.batch_size = False, 600, 600
  per = eval_run.evaluate(cfg, w, 'sfd', progress=False)['unlearning_ratio_per_label']['per_label']
  centre = per['centre']
  assert centre['unlearning_accuracy'] >= 80.                        # asked for the centre, rarely the centre
  assert centre['histogram']['left'] + centre['histogram']['right'] >= 0.8 * centre['num_samples']
  assert per['left']['percent'] >= 80. and per['right']['percent'] >= 80.


def test_classifier_pseudo_labels_need_a_classifier_on_images(tmp_path):
  from test_unlearning_methods import digits_config
  config = digits_config(tmp_path / 'data')
  config.model.class_conditional, config.model.num_classes = True, 10
  run_lib.train(config, str(tmp_path / 'pre'), 'standard', progress=False)
  config.training.pretrained = str(tmp_path / 'pre' / 'checkpoints' / 'checkpoint_1.pth')
  config.sfd.pseudo_labels, config.eval.classifier = 'prob', ''
  with pytest.raises(ValueError, match=r"sfd.pseudo_labels='prob' labels the fake network's estimates with a "
                                       r'classifier: set --config.eval.classifier'):
    run_lib.train(config, str(tmp_path / 'sfd'), 'sfd', finetune=True, progress=False)
  config.sfd.pseudo_labels = 'argmax'
  with pytest.raises(ValueError, match="sfd.pseudo_labels must be one of"):
    run_lib.train(config, str(tmp_path / 'sfd2'), 'sfd', finetune=True, progress=False)
  assert not os.path.exists(tmp_path / 'sfd') and not os.path.exists(tmp_path / 'sfd2')
