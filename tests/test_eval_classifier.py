"""Tests of evaluation/classifier.py: training, the file format and its sha256, the refusals of
load_classifier, and the Unlearning Ratio of real digits in known proportions. CPU, seconds: the
classifier is a width-16 CNN on scikit-learn's 8×8 digits (DIGITS8X8)."""
import os

import pytest
import torch

import datasets
import utils
from configs.default_configs import get_base_config
from evaluation import classifier as C
from evaluation.unlearning_ratio import unlearning_ratio, unlearning_ratio_of_samples


def digits_config(root, name='DIGITS8X8', size=8, forget='3'):
  config = get_base_config()
  config.data.dataset = name
  config.data.root = str(root)
  config.data.image_size = size
  config.data.num_channels = 1
  config.data.download = False
  config.unlearn.forget = forget
  config.seed = 7
  config.device = 'cpu'
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A quickly trained DIGITS8X8 classifier saved to a file: (config, data, path, metadata)."""
  root = tmp_path_factory.mktemp('clf')
  config = digits_config(root / 'data')
  data = datasets.get_dataset(config, evaluation=True)
  arch = C.default_architecture(8, 1, 10)
  arch['kwargs']['width'] = 16
  net, meta = C.fit_classifier(data, 7, architecture=arch, progress=False, epochs=10)
  path = str(root / C.CLASSIFIER_FILENAME)
  meta = C.save_classifier(net, meta, path)
  return config, data, path, meta


def test_train_classifier_writes_a_safe_deterministic_file(tmp_path):
  config = digits_config(tmp_path / 'data', forget='')  # no forget set needed: it trains on all of D
  rng = torch.get_rng_state()
  meta1 = C.train_classifier(config, str(tmp_path / 'a.pth'), progress=False, epochs=1)
  assert torch.equal(torch.get_rng_state(), rng)  # seeded privately, the global RNG is untouched
  meta2 = C.train_classifier(config, str(tmp_path / 'b.pth'), progress=False, epochs=1)
  assert meta1['sha256'] == meta2['sha256']
  obj = torch.load(str(tmp_path / 'a.pth'), weights_only=True)
  assert set(obj) == {'state_dict', 'metadata'}
  meta = obj['metadata']
  for key in ('dataset', 'label_names', 'label_type', 'image_size', 'num_channels', 'architecture',
              'test_accuracy', 'per_class_accuracy', 'seed', 'sha256'):
    assert key in meta
  assert meta['dataset'] == 'DIGITS8X8' and meta['label_names'] == [str(d) for d in range(10)]
  assert (meta['label_type'], meta['image_size'], meta['num_channels'], meta['seed']) == ('class', 8, 1, 7)
  assert meta['architecture'] == {'name': 'SmallCNN', 'kwargs': {'num_channels': 1, 'num_outputs': 10, 'width': 32}}
  assert set(meta['per_class_accuracy']) == set(meta['label_names'])
  assert meta['sha256'] == C.state_dict_sha256(obj['state_dict']) == meta1['sha256']
  config.seed = 8
  assert C.train_classifier(config, str(tmp_path / 'c.pth'), progress=False, epochs=1)['sha256'] != meta1['sha256']


def test_sha256_definition():
  state = {'b': torch.tensor([1., 2.]), 'a': torch.tensor([3], dtype=torch.int64)}
  import hashlib
  expected = hashlib.sha256(state['a'].numpy().tobytes() + state['b'].numpy().tobytes()).hexdigest()
  assert C.state_dict_sha256(state) == expected


def test_quick_classifier_is_accurate_and_reloads(trained):
  config, data, path, meta = trained
  assert meta['test_accuracy'] >= 0.95
  clf = C.load_classifier(path, config, data=data)
  assert clf.sha256 == meta['sha256'] and clf.label_names == tuple(str(d) for d in range(10))
  x, y = next(data.iterator('test', 'full', 1000, seed=0, shuffle=False, drop_last=False, infinite=False))
  pred = C.classify(clf, x, batch_size=50)
  assert pred.shape == y.shape and pred.dtype == torch.int64
  assert (pred == y).double().mean().item() == pytest.approx(meta['test_accuracy'])
  proba = clf.predict_proba(x[:5])
  torch.testing.assert_close(proba.sum(1), torch.ones(5))
  assert clf.describe() == {'path': path, 'sha256': meta['sha256'], 'test_accuracy': meta['test_accuracy']}
  with pytest.raises(ValueError, match='takes images'):
    clf.predict(torch.rand(2, 1, 16, 16))
  assert torch.equal(C.get_classifier(config, data=data, path=path).predict(x[:20]), pred[:20])


@pytest.mark.parametrize('forget', ['3', '3,7'])
def test_unlearning_ratio_of_real_digits_in_known_proportions(trained, forget):
  """'Samples' of known classes (real test digits): all forget-class digits plus 3× as many others, so
  the forget share is exactly 25 %; the measured ratio's Wilson interval must contain it."""
  config, data, path, _ = trained
  clf = C.load_classifier(path, config, data=data)
  forget_idx = datasets.parse_forget(forget, data.class_names)
  x, y = next(data.iterator('test', 'full', 1000, seed=0, shuffle=False, drop_last=False, infinite=False))
  is_f = datasets.forget_mask(y, forget_idx)
  g = torch.Generator().manual_seed(0)
  others = torch.nonzero(~is_f).flatten()
  others = others[torch.randperm(len(others), generator=g)[:3 * int(is_f.sum())]]
  samples = torch.cat([x[is_f], x[others]])
  truth = 100. * int(is_f.sum()) / len(samples)
  assert truth == pytest.approx(25.)
  ur = unlearning_ratio_of_samples(samples, clf, forget_idx)
  assert ur['ci95'][0] <= truth <= ur['ci95'][1]
  assert ur['num_samples'] == len(samples) and sum(ur['class_histogram'].values()) == len(samples)
  # The same through the label-level function.
  assert unlearning_ratio(clf.predict(samples), forget_idx, 10)['percent'] == ur['percent']


# ---------------------------------------------------------------------------- refusals


def test_missing_or_unset_file_says_how_to_make_one(tmp_path, trained):
  config = trained[0]
  with pytest.raises(C.ClassifierError, match='--mode train_classifier') as err:
    C.load_classifier(str(tmp_path / 'nothing.pth'), config)
  assert 'nothing.pth' in str(err.value)
  with pytest.raises(C.ClassifierError, match='config.eval.classifier is empty'):
    C.get_classifier(config, data=trained[1])
  assert issubclass(C.ClassifierError, ValueError)


def test_refuses_a_classifier_of_another_data_set(tmp_path, trained):
  # MNIST5K at 8 px has the same labels and image shape: only the data set differs.
  other = digits_config(tmp_path / 'data', name='MNIST5K', size=8)
  with pytest.raises(C.ClassifierError, match='trained on DIGITS8X8.*MNIST5K'):
    C.load_classifier(trained[2], other)
  with pytest.raises(C.ClassifierError, match='takes 1×8×8 images'):
    C.load_classifier(trained[2], digits_config(tmp_path / 'data', size=16))


def test_refuses_another_label_set(tmp_path, trained):
  obj = torch.load(trained[2], weights_only=True)
  obj['metadata']['label_names'] = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']
  path = str(tmp_path / 'relabelled.pth')
  utils.atomic_torch_save(obj, path)
  with pytest.raises(C.ClassifierError, match='labels'):
    C.load_classifier(path, trained[0], data=trained[1])


def test_refuses_tampered_weights(tmp_path, trained):
  obj = torch.load(trained[2], weights_only=True)
  key = sorted(obj['state_dict'])[0]
  obj['state_dict'][key] = obj['state_dict'][key].clone()
  obj['state_dict'][key].view(-1)[0] += 1e-3
  path = str(tmp_path / 'tampered.pth')
  torch.save(obj, path)
  with pytest.raises(C.ClassifierError, match='sha256'):
    C.load_classifier(path, trained[0], data=trained[1])


def test_refuses_corrupt_unsafe_and_foreign_files(tmp_path, trained):
  bad = tmp_path / 'corrupt.pth'
  bad.write_bytes(open(trained[2], 'rb').read()[:1000])
  with pytest.raises(C.ClassifierError, match='cannot read'):
    C.load_classifier(str(bad), trained[0], data=trained[1])
  unsafe = str(tmp_path / 'unsafe.pth')
  torch.save({'state_dict': {}, 'metadata': {}, 'x': os.path.join}, unsafe)  # a callable: not weights-only
  with pytest.raises(C.ClassifierError, match='refusing'):
    C.load_classifier(unsafe, trained[0], data=trained[1])
  foreign = str(tmp_path / 'checkpoint.pth')
  torch.save({'model': {}, 'ema': {}, 'step': 3}, foreign)
  with pytest.raises(C.ClassifierError, match='not a classifier file'):
    C.load_classifier(foreign, trained[0], data=trained[1])


# ---------------------------------------------------------------------------- other data


def test_gmm2d_needs_no_training(tmp_path):
  config = get_base_config()
  config.data.dataset = 'GMM2D'
  config.data.num_train, config.data.num_test = 200, 2000
  config.unlearn.forget = 'centre'
  clf = C.get_classifier(config)
  assert isinstance(clf, C.GMMClassifier) and clf.label_names == ('left', 'centre', 'right')
  assert 0.8 < clf.test_accuracy < 0.95  # the Bayes accuracy of the overlapping mixture
  assert clf.describe() == {'path': None, 'sha256': None, 'test_accuracy': clf.test_accuracy}
  assert torch.equal(clf.predict(torch.tensor([[-2., -2.], [0.1, 0.], [3., 2.]])), torch.tensor([0, 1, 2]))
  with pytest.raises(C.ClassifierError, match='needs no trained classifier'):
    C.train_classifier(config, str(tmp_path / 'x.pth'), progress=False)


def test_attribute_data_get_one_binary_head_each(tmp_path):
  """CelebA-style data: [N, A] 0/1 labels -> one logit per attribute, BCE, bool predictions."""
  g = torch.Generator().manual_seed(0)
  n = 320
  attrs = torch.randint(0, 2, (n, 2), generator=g)
  x = 0.1 * torch.rand(n, 3, 8, 8, generator=g)
  x[attrs[:, 0] == 1, :, :4, :] += 0.8   # attribute 'Top': a bright top half
  x[attrs[:, 1] == 1, 0, :, :] += 0.5    # attribute 'Red': a strong red channel
  base_tr, base_te = datasets.TensorPairDataset(x[:256], attrs[:256]), datasets.TensorPairDataset(x[256:], attrs[256:])
  tr, te = datasets.make_split(base_tr, (0,)), datasets.make_split(base_te, (0,))
  data = datasets.DataBundle(name='FAKEATTR', train=tr, test=te, class_names=('Top', 'Red'), forget_indices=(0,),
                             forget_names=('Top',), num_classes=2, is_image=True, shape=(3, 8, 8), source='test',
                             label_type='attribute')
  net, meta = C.fit_classifier(data, 0, progress=False, epochs=12, batch_size=32, max_shift=0)
  assert meta['label_type'] == 'attribute' and set(meta['per_class_accuracy']) == {'Top', 'Red'}
  assert meta['test_accuracy'] > 0.9
  path = str(tmp_path / 'attr.pth')
  C.save_classifier(net, meta, path)
  clf = C.load_classifier(path, data=data)
  pred = clf.predict(x[256:])
  assert pred.dtype == torch.bool and pred.shape == (64, 2)
  ur = unlearning_ratio(pred, data.forget_indices, class_names=data.class_names)
  truth = 100. * attrs[256:, 0].float().mean().item()
  assert ur['ci95'][0] <= truth <= ur['ci95'][1]


@pytest.mark.parametrize('size,channels,name,stride', [(8, 1, 'SmallCNN', None), (28, 1, 'SmallCNN', None),
                                                        (32, 3, 'SmallResNet', 1), (64, 3, 'SmallResNet', 2)])
def test_architectures_by_image_size(size, channels, name, stride):
  spec = C.default_architecture(size, channels, 10)
  assert spec['name'] == name and spec['kwargs'].get('stem_stride') == stride
  net = C.build_architecture(spec).eval()
  assert net(torch.rand(2, channels, size, size)).shape == (2, 10)
  with pytest.raises(C.ClassifierError, match='unknown classifier architecture'):
    C.build_architecture({'name': 'VGG19', 'kwargs': {}})


def test_random_translate_is_a_seeded_shift():
  x = torch.zeros(3, 1, 5, 5)
  x[:, :, 2, 2] = 1.
  out = C.random_translate(x, 1, torch.Generator().manual_seed(0))
  assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), torch.ones(3))
  assert torch.equal(out, C.random_translate(x, 1, torch.Generator().manual_seed(0)))
  pos = torch.nonzero(out[:, 0])[:, 1:]
  assert ((pos - 2).abs() <= 1).all()
