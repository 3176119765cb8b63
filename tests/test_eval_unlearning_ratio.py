"""Tests of evaluation/unlearning_ratio.py: counts, intervals, attributes, errors, and the ratio of
2-D "models" whose samples come from known mixture components (exact Bayes classifier)."""
import pytest
import torch

import datasets
from configs.default_toy_configs import get_default_configs
from evaluation.classifier import GMMClassifier, get_classifier
from evaluation.stats import wilson_interval
from evaluation.unlearning_ratio import unlearning_ratio, unlearning_ratio_of_samples


def test_counts_percent_interval_and_histogram():
  labels = torch.tensor([3] * 11 + [7] * 4 + [0] * 85)
  ur = unlearning_ratio(labels, [3], num_classes=10)
  assert ur['percent'] == pytest.approx(11.) and ur['num_samples'] == 100 and ur['num_forget'] == 11
  lo, hi = wilson_interval(11, 100)
  assert ur['ci95'] == pytest.approx([100 * lo, 100 * hi])
  assert ur['class_histogram'] == {'0': 85, '1': 0, '2': 0, '3': 11, '4': 0, '5': 0, '6': 0, '7': 4, '8': 0, '9': 0}
  both = unlearning_ratio(labels, (7, 3), class_names=[f'c{i}' for i in range(10)])
  assert both['percent'] == pytest.approx(15.) and both['class_histogram']['c7'] == 4
  none = unlearning_ratio(torch.zeros(20, dtype=torch.long), [1], 2)
  assert none['percent'] == 0. and none['ci95'][0] == 0. and 0 < none['ci95'][1] < 20


def test_the_forgotten_class_samples_are_listed_by_position():
  labels = torch.tensor([0, 3, 7, 3, 1, 7])
  assert unlearning_ratio(labels, [3], num_classes=10)['forget_samples'] == [1, 3]
  assert unlearning_ratio(labels, [7, 3], num_classes=10)['forget_samples'] == [1, 2, 3, 5]
  pred = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.bool)
  assert unlearning_ratio(pred, [1], 2)['forget_samples'] == [1, 2]


def test_attribute_labels_count_any_forget_attribute():
  pred = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
  ur = unlearning_ratio(pred, [0], class_names=['Bangs', 'Smiling', 'Male'])
  assert ur['percent'] == 50. and ur['class_histogram'] == {'Bangs': 2, 'Smiling': 2, 'Male': 0}
  assert unlearning_ratio(pred, [0, 1], 3)['percent'] == 75.


@pytest.mark.parametrize('labels,forget,k,match', [
  (torch.zeros(0, dtype=torch.long), [0], 2, 'at least one'),
  (torch.tensor([0, 5]), [0], 3, 'out of range'),
  (torch.tensor([0, 1]), [4], 3, 'forget indices'),
  (torch.tensor([0, 1]), [], 3, 'empty'),
  (torch.zeros(2, 3), [0], 4, 'attribute'),
])
def test_bad_input(labels, forget, k, match):
  with pytest.raises(ValueError, match=match):
    unlearning_ratio(labels, forget, k)


def test_well_separated_mixture_recovers_the_known_proportion():
  density = datasets.GaussianMixture([[-20., 0.], [0., 0.], [20., 0.]], [1, 1, 1], 1.0, ('a', 'b', 'c'))
  clf = GMMClassifier(density, 'TOY')
  # A "model" whose samples come 7 % from the forget component b.
  counts = {'a': 500, 'b': 70, 'c': 430}
  g = torch.Generator().manual_seed(0)
  x = torch.cat([density.means[i].float() + torch.randn(n, 2, generator=g) for i, n in enumerate(counts.values())])
  ur = unlearning_ratio_of_samples(x, clf, [1])
  assert ur['percent'] == pytest.approx(7.)  # separated by 20 sigma: every point classified correctly
  assert ur['class_histogram'] == counts


def test_gmm2d_samples_from_known_components_within_the_wilson_interval():
  """The paper's mixture overlaps, so the Bayes classifier errs: the expected ratio of a model that puts
  a share q on each component is sum_k q_k P(classified centre | k), measured here on a large
  independent sample; the ratio of 2,000 model samples must contain it in its 95 % interval."""
  config = get_default_configs()
  config.data.num_train, config.data.num_test = 100, 100
  data = datasets.get_dataset(config)
  clf = get_classifier(config, data=data)
  density = data.density
  shares = {0: 0.45, 1: 0.10, 2: 0.45}   # a "Standard" model that kept 10 % on the forget component
  g = torch.Generator().manual_seed(1)

  def from_component(k, n):
    return density.means[k].float() + torch.randn(n, 2, generator=g)
  expected = sum(q * (clf.predict(from_component(k, 200000)) == 1).double().mean().item() for k, q in shares.items())
  samples = torch.cat([from_component(k, int(2000 * q)) for k, q in shares.items()])
  ur = unlearning_ratio_of_samples(samples, clf, data.forget_indices)
  assert ur['num_samples'] == 2000 and set(ur['class_histogram']) == {'left', 'centre', 'right'}
  assert ur['ci95'][0] <= 100 * expected <= ur['ci95'][1]
  # An "Unseen" model with no mass on the centre still gets centre labels from the overlap.
  outer = torch.cat([from_component(0, 1000), from_component(2, 1000)])
  assert 0 < unlearning_ratio_of_samples(outer, clf, data.forget_indices)['percent'] < 10
