"""Baselines without a forget term: Standard (train on D), Unseen (retrain on D_g: the gold standard of
unlearning) and Fine-tune (continue training a pretrained model on D_g only: the cheap retrain). All three train
class-conditional networks too (the batches then carry their class labels)."""
from unlearning.base import Method, Objective, dsm_term, register


def _plain(ctx):
  """L = mean(L_g), L_g = λ ‖s − ∇ log p_0t‖² on the method's training data."""
  return Objective(retain_fn=dsm_term(ctx))


STANDARD = register(Method(
  'standard', _plain, official_name='normal', retain_data='full', forget_data=False,
  summary='score matching on all data D (the model to unlearn from)',
  equation='L = λ‖s − ∇log p_0t(x_t|x_0)‖², x_0 ~ D', paper='Song et al. 2021 (score_sde)', class_conditional=True))

UNSEEN = register(Method(
  'unseen', _plain, official_name='no_u', retain_data='retain', forget_data=False,
  summary='score matching on D_g only, from scratch: retraining, the gold standard',
  equation='L = λ‖s − ∇log p_0t(x_t|x_0)‖², x_0 ~ D_g', paper='MSGM (Unseen)', class_conditional=True))

FINETUNE = register(Method(
  'finetune', _plain, retain_data='retain', forget_data=False,
  summary='continue training the pretrained model on D_g only (with --finetune): the cheap retrain',
  equation='L = λ‖s − ∇log p_0t(x_t|x_0)‖², x_0 ~ D_g, θ from the pretrained model',
  paper='the "FT" baseline of SalUn (Fan et al., ICLR 2024) and EraseDiff (Wu et al., 2024)', class_conditional=True))
