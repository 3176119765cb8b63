"""A small MLP score network for low-dimensional data (the 2-D toy)."""
import math

import torch
from torch import nn

import conditioning
from models import utils


def sinusoidal_embedding(labels, dim, max_positions=10000, dtype=torch.float32):
  """Transformer-style embedding of the (float) time labels [B] -> [B, dim], in ``dtype``."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_positions) * torch.arange(half, device=labels.device, dtype=dtype) /
                    max(half - 1, 1))
  args = labels.to(dtype)[:, None] * freqs[None]
  emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
  if dim % 2:
    emb = nn.functional.pad(emb, (0, 1))
  return emb


@utils.register_model(name='mlp')
class MLP(nn.Module):
  """Time-conditioned MLP: x [B, D] and labels [B] -> output [B, D].

  The output is the noise ε for VP/sub-VP SDEs and the score for VE (see ``sde_lib``). Under a VE SDE
  with ``config.model.scale_by_sigma`` the output is divided by the σ label, as in NCSN++.
  Config: ``data.num_channels`` is D, ``model.hidden_dims``, ``model.embedding_dim``.
  For VE the label σ is embedded through log σ, as NCSN++'s Fourier features do.
  With ``model.class_conditional``: ``forward(x, labels, class_labels)`` adds a class-label embedding
  (``model.num_classes`` + 1 rows, the last the null label) to the time embedding (``conditioning``).
  """

  supports_class_labels = True

  def __init__(self, config):
    super().__init__()
    dim = config.data.num_channels
    self.embedding_dim = config.model.embedding_dim
    self.scale_by_sigma = config.model.scale_by_sigma
    self.log_labels = config.training.sde.lower() == 'vesde' and config.training.continuous
    self.act = nn.SiLU()
    self.temb = nn.Sequential(nn.Linear(self.embedding_dim, self.embedding_dim * 2), nn.SiLU(),
                              nn.Linear(self.embedding_dim * 2, self.embedding_dim * 2))
    layers = []
    prev = dim
    for h in config.model.hidden_dims:
      layers.append(nn.ModuleDict({'fc': nn.Linear(prev, h), 'temb': nn.Linear(self.embedding_dim * 2, h)}))
      prev = h
    self.blocks = nn.ModuleList(layers)
    self.out = nn.Linear(prev, dim)
    # Built last, so that the other weights are drawn as in the unconditional network.
    self.num_classes = conditioning.num_classes(config)
    if self.num_classes:
      self.label_embedding = utils.label_embedding(config, self.embedding_dim * 2)

  def forward(self, x, labels, class_labels=None):
    cond = torch.log(labels) if self.log_labels else labels
    emb = self.temb(sinusoidal_embedding(cond, self.embedding_dim, dtype=x.dtype))
    emb = utils.add_label_embedding(self, emb, class_labels)
    h = x
    for block in self.blocks:
      h = self.act(block['fc'](h) + block['temb'](emb))
    out = self.out(h)
    if self.scale_by_sigma:
      out = out / labels.reshape((-1,) + (1,) * (out.ndim - 1))
    return out
