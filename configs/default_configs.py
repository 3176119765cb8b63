"""Every configuration key of the project, with the official score_sde / MSGM defaults.

The per-data-set files (``default_<dataset>_configs.py``) start from ``get_base_config()`` and change
only what differs; the experiment files under ``vp/``, ``ve/``, ``subvp/``, ``toy/`` and ``mnist/`` then
set the SDE, sampler and network. Because every key exists here, a misspelt override such as
``--config.model.nff=64`` fails with an error naming the key.
"""
import ml_collections


def get_base_config():
  config = ml_collections.ConfigDict()

  # training
  config.training = training = ml_collections.ConfigDict()
  training.sde = 'vpsde'                 # vpsde | subvpsde | vesde
  training.batch_size = 128              # retain-data (or full-data) batch
  training.batch_size_un = 128           # forget-data batch of the MSGM tasks (official key name)
  training.n_iters = 1300001
  training.snapshot_freq = 50000         # steps between kept checkpoints checkpoints/checkpoint_K.pth
  training.log_freq = 50
  training.eval_freq = 100               # steps between evaluation-loss logs
  training.snapshot_freq_for_preemption = 10000  # steps between checkpoints-meta/checkpoint.pth
  training.snapshot_sampling = True      # write a sample grid with every kept checkpoint
  training.likelihood_weighting = False  # λ(t) = g(t)² instead of σ_t² (score form)
  training.continuous = True
  training.reduce_mean = False
  training.eps = 1e-5                    # smallest training time
  training.pretrained = ''               # checkpoint that --finetune starts from
  training.num_workers = 0               # data-loader worker processes
  training.snapshot_num_samples = 64     # samples drawn for each snapshot grid
  # speed (docs/PERFORMANCE.md); the defaults are the plain fp32 eager step
  training.precision = 'fp32'            # fp32 | bf16 | fp16 (CUDA; loss scaling): autocast of the network's forward
  training.channels_last = False         # images and network in the channels_last memory format
  training.compile = ''                  # '' (eager) | default | reduce-overhead | max-autotune: torch.compile mode
  training.pin_memory = False            # CUDA: batches in pinned host memory, copied without blocking
  training.label_dropout = 0.1           # class-conditional: share of training labels set to the null label (CFG)

  # sampling
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = 'pc'                 # pc | ode
  sampling.predictor = 'euler_maruyama'  # euler_maruyama | reverse_diffusion | ancestral_sampling | none
  sampling.corrector = 'none'            # langevin | ald | none
  sampling.n_steps_each = 1
  sampling.noise_removal = True
  sampling.probability_flow = False
  sampling.snr = 0.16
  sampling.eps = 0.                      # 0 = the SDE's default (1e-3 VP/sub-VP, 1e-5 VE)
  sampling.ode_method = 'RK45'
  sampling.ode_rtol = 1e-5
  sampling.ode_atol = 1e-5
  sampling.ode_solver = 'torchdiffeq'    # torchdiffeq (on the data's device) | scipy (official path)
  sampling.ode_max_nfe = 5000            # per ODE solve (one batch); a diverged score stops with an error; 0 = no limit
  sampling.cuda_graph = True             # on CUDA: replay the ODE right-hand side (sampler, likelihood) from a CUDA graph
  sampling.labels = ''                   # class-conditional: classes asked for, cycled ('' = every class; "3", "0,2")
  sampling.guidance = 1.                 # classifier-free guidance w: s(∅) + w (s(y) − s(∅)); 0 uncond., 1 cond.

  # evaluation
  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 0                # 0 = the latest checkpoint only
  evaluate.end_ckpt = 0
  evaluate.batch_size = 128
  evaluate.enable_sampling = True
  evaluate.num_samples = 50000
  evaluate.enable_loss = False
  evaluate.enable_bpd = False
  evaluate.enable_fid = False
  evaluate.bpd_dataset = 'test'
  evaluate.bpd_num_repeats = 1
  evaluate.bpd_num_samples = 0           # 0 = the whole split
  evaluate.classifier = ''
  evaluate.fid_weights = ''
  evaluate.fid_num_samples = 0           # 0 = eval.num_samples
  evaluate.fid_split = 'test'            # the split whose D_g gives the FID reference statistics
  evaluate.fid_num_reference = 0         # reference images of that D_g (0 = all; fewer: quick checks only)
  evaluate.classifier_epochs = 0         # --mode train_classifier settings (0 = the classifier's defaults)
  evaluate.classifier_batch_size = 0
  evaluate.classifier_lr = 0.
  # downstream tasks on D_g and D_f test images (--mode inpaint / reconstruct; docs/downstream.md)
  evaluate.inpaint = False               # --mode eval also inpaints
  evaluate.inpaint_mask = 'band'         # band | box | left | right | top | bottom | random
  evaluate.inpaint_band_start = 0.5      # band: rows [start·H, end·H) unknown (64 px: rows 32–48, the paper's)
  evaluate.inpaint_band_end = 0.75
  evaluate.inpaint_box = 0.5             # box: centred square, side as a fraction of the image side
  evaluate.inpaint_share = 0.25          # random: share of pixels unknown, per image, seeded
  evaluate.reconstruct = False           # --mode eval also reconstructs
  evaluate.reconstruct_t = 0.02          # latent perturbed with the marginal at t (official 0.02)
  evaluate.downstream_num_images = 500   # test images per part (D_g, D_f), a seeded subset; 0 = all
  evaluate.downstream_fid = True         # FID of restored D_g images against the D_g test set
  evaluate.clip_weights = ''             # local CLIP weights (transformers folder or open_clip file); '' = skip
  evaluate.clip_arch = 'ViT-B-32'        # open_clip architecture of a clip_weights file

  # data
  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'CIFAR10'
  data.root = './data'                   # where the data sets live (official: data_path)
  data.download = True                   # let torchvision download when online
  data.debian_datasets_dir = '/usr/share/datasets'  # Debian's dataset-* packages (offline Fashion-MNIST)
  data.image_size = 32
  data.random_flip = True
  data.centered = False                  # [-1, 1] when True, [0, 1] otherwise
  data.uniform_dequantization = False
  data.num_channels = 3
  data.num_train = 20000                 # GMM2D only: training points drawn
  data.num_test = 2000                   # GMM2D only: test points drawn

  # model
  config.model = model = ml_collections.ConfigDict()
  model.name = 'ncsnpp'
  model.sigma_min = 0.01
  model.sigma_max = 50.
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.
  model.dropout = 0.1
  model.embedding_type = 'fourier'       # fourier | positional
  model.ema_rate = 0.9999
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.scale_by_sigma = False
  model.fir = False
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'         # ddpm | biggan
  model.progressive = 'none'             # none | output_skip | residual
  model.progressive_input = 'none'       # none | input_skip | residual
  model.progressive_combine = 'sum'      # sum | cat
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.fourier_scale = 16.
  model.conv_size = 3
  model.interpolation = 'bilinear'       # NCSNv2 only
  model.hidden_dims = (128, 128, 128)    # MLP only
  model.embedding_dim = 64               # MLP only
  model.class_conditional = False        # a label embedding (num_classes + 1 rows, the last the null label) in temb
  model.num_classes = 0                  # classes of the data set (class_conditional only)

  # optimization
  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0.
  optim.optimizer = 'Adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.
  optim.amsgrad = False
  optim.fused = False                    # PyTorch's fused Adam kernel (CUDA; CPU in recent PyTorch)

  # unlearning (MSGM)
  config.unlearn = unlearn = ml_collections.ConfigDict()
  unlearn.forget = ''                    # class names/indices ("automobile,dog", "3,7") or attributes ("Bangs")
  unlearn.alpha = 0.99                   # weight of the retain term L_g; 1 - alpha weights L_f
  unlearn.forget_every = 4               # the forget term is applied on every k-th step (step % k == 0)
  unlearn.orthogonal_product = 'dot'     # dot (paper) | elementwise (official code)
  unlearn.obtuse_sign = 'paper'          # paper (score pushed away) | official (opposite sign)
  # Extensions (docs/unlearning.md); the defaults give the paper's forms.
  unlearn.obtuse_form = 'linear'         # linear (paper) | target | ratio (needs reference) | negative_dsm
  unlearn.push = 1.                      # κ of obtuse_form='target' / 'ratio'
  unlearn.forget_t_min = 0.              # the forget term is drawn on t ∈ [forget_t_min, forget_t_max]
  unlearn.forget_t_max = 1.
  unlearn.reference = ''                 # frozen reference checkpoint: forget terms act on s − s_ref
  unlearn.low_noise_push = 0.            # κ' > 0: Obtuse adds the target form with push κ' on t ≤ low_noise_t_max
  unlearn.low_noise_t_max = 0.05
  unlearn.preset = ''                    # a named setting (see presets.py), e.g. toy-best
  # obtuse_form='hole': a hole of depth hole_depth (nats) where log p_f,t/p_g,t > hole_log_ratio
  unlearn.classifier = ''                # noisy-classifier checkpoint (--mode train_noisy_classifier) | exact (toy)
  unlearn.hole_depth = 10.               # c: the hole's depth in nats
  unlearn.hole_log_ratio = 0.            # ℓ*: the log density ratio log p_f,t/p_g,t above which it is dug
  unlearn.hole_sharpness = 4.            # β: the edge's steepness per nat of log ratio
  unlearn.hole_forget_fraction = 0.      # q > 0: set ℓ* so that a share q of D_f lies above it (calibration-free)

  # the noisy classifier of D_f against D_g (--mode train_noisy_classifier; unlearn.classifier)
  config.noisy_classifier = nc = ml_collections.ConfigDict()
  nc.n_iters = 4000
  nc.lr = 1e-3                           # AdamW, cosine decay to 0
  nc.weight_decay = 0.
  nc.ema_rate = 0.999
  nc.t_min = 0.                          # trained on t ~ U[t_min, t_max]: cover the forget term's range
  nc.t_max = 0.1

  # The other methods of the family, one block each (unlearning/<method>.py says where each default comes from).
  config.neggrad = ng = ml_collections.ConfigDict()       # --task neggrad: gradient ascent on D_f, with D_g
  ng.alpha = 0.5                         # weight of L_g; 1 − alpha weights the ascent on D_f
  ng.ceiling = 1.                        # the ascent on a forget item stops at this many times the loss of a zero score
  config.salun = sl = ml_collections.ConfigDict()         # --task salun: a weight-saliency mask on another method
  sl.base = 'neggrad'                    # the forget objective the mask is applied to (a method with a forget term)
  sl.share = 0.5                         # share of the weights that move: those with the largest |∇ L_f|
  sl.mask_batches = 0                    # D_f batches (training.batch_size_un) for the gradient; 0 = all of D_f
  config.sa = sa = ml_collections.ConfigDict()            # --task sa: Selective Amnesia (EWC + replay + surrogate)
  sa.ewc_lambda = 10.                    # λ of the EWC penalty, in the paper's loss scale (see unlearning/sa.py)
  sa.replay_weight = 1.                  # γ of the replay term
  sa.replay = 'generated'                # generated (samples of the pretrained model, forget classes dropped) | data (D_g)
  sa.samples = 1000                      # samples generated from the pretrained model (Fisher and replay)
  sa.fisher_times = 8                    # (t, z) draws per sample for its gradient of the time-summed loss
  config.erasediff = ed = ml_collections.ConfigDict()     # --task erasediff: the bi-level update of EraseDiff
  ed.eta = 0.1                           # η of the dynamic barrier: λ = max(η − ⟨∇L_g, ∇L_f⟩ / ‖∇L_f‖², 0)
  ed.fixed_lambda = -1.                  # >= 0: a fixed λ (the released code's 0.1) instead of the barrier
  config.siss = si = ml_collections.ConfigDict()          # --task siss: importance-sampled mixture objective
  si.mixture = 0.5                       # λ: the share of x_t drawn around forget items
  si.superfactor = 1.                    # s: multiplies the forget term (1: the unbiased D_g objective)
  si.scaling_norm = 0.                   # > 0: the forget gradient rescaled to this norm (the released code)
  config.vdu = vdu = ml_collections.ConfigDict()          # --task vdu: D_f only, plasticity + stability
  vdu.gamma = 1.                         # γ: weight of the stability term
  vdu.ceiling = 1.                       # the plasticity ascent stops at this many times the loss of a zero score
  vdu.checkpoints = ''                   # comma-separated independently trained checkpoints: per-weight mean/variance
  vdu.samples = 1000                     # single-checkpoint fallback: generated samples for the diagonal Fisher
  vdu.fisher_times = 8
  vdu.variance_floor = 1e-8              # added to each variance (several checkpoints)
  config.sfd = sfd = ml_collections.ConfigDict()          # --task sfd: Score Forgetting Distillation (conditional)
  sfd.t_init = 0.44                      # the generator's fixed time, a fraction of T (SFD: step 440 of 1000)
  sfd.t_min = 0.038                      # distillation times t ~ U[t_min, t_max) (SFD: steps 38 … 712 of 1000)
  sfd.t_max = 0.712
  sfd.alpha = 1.2                        # α of the score-identity loss
  sfd.fake_forget_weight = 0.01          # weight of the fake network's denoising loss on forget-class samples
  sfd.generator_forget_weight = 0.01     # weight of the forgetting term (teacher given the remapped class)
  sfd.remap = ''                         # 'f:r,…' class indices; '' = each forget class to the next retained class
  sfd.pseudo_labels = ''                 # '' = sfd.remap; per sample instead: 'rand' (uniform retained class), 'amax' or
                                         # 'prob' (eval.classifier's most probable / drawn retained class of the fake x̂)
  sfd.lr = 1e-5                          # Adam of both networks, β = (beta1, 0.999)
  sfd.beta1 = 0.
  sfd.grad_clip = 1.                     # gradients clipped by value

  # The relearning attack (--mode relearn; evaluation/relearn.py, docs/evaluation.md): fine-tune the evaluated
  # model on k D_f training items and measure the Unlearning Ratio after each listed number of attack steps.
  config.relearn = relearn = ml_collections.ConfigDict()
  relearn.k = '8,32,128'                 # attacker's D_f training items (nested seeded subsets), comma-separated
  relearn.steps = '0,50,100,200'         # attack steps after which the UR is measured (strictly increasing, >= 0)
  relearn.lr = 0.                        # Adam learning rate of the attack; 0 = optim.lr (no warm-up)
  relearn.batch_size = 32                # items per attack step (at most k)
  relearn.num_samples = 0                # samples per UR measurement; 0 = eval.num_samples
  # The loss-based membership-inference test on D_f (eval.enable_mia; evaluation/membership.py).
  evaluate.enable_mia = False            # --mode eval also writes "membership" (AUC of D_f train vs test items)
  config.mia = mia = ml_collections.ConfigDict()
  mia.num_items = 1000                   # items per side (D_f train, D_f test), a seeded subset; 0 = all
  mia.num_draws = 16                     # fixed (t, z) draws per item, the same for every item and model
  mia.t_min = 0.05                       # t drawn stratified on [max(eps, t_min), t_max]
  mia.t_max = 0.3

  config.seed = 42
  config.device = 'auto'                 # auto | cpu | cuda | cuda:N
  return config


def _missing(base, config, prefix=()):
  """``(path, default)`` for every key of ``base`` that ``config`` lacks (a missing section counts once)."""
  for key, default in base.items():
    if key not in config:
      yield prefix + (key,), default
    elif isinstance(default, ml_collections.ConfigDict) and isinstance(config[key], ml_collections.ConfigDict):
      yield from _missing(default, config[key], prefix + (key,))


#: the paper's forget set of each data set: what a config without an ``unlearn`` section forgets
PAPER_FORGET = {'CIFAR10': 'automobile', 'STL10': 'airplane', 'CELEBA': 'Bangs', 'MNIST': '3', 'MNIST5K': '3',
                'DIGITS8X8': '3', 'FASHIONMNIST': 'Trouser', 'GMM2D': 'centre'}


def with_defaults(config):
  """``config`` with every key it lacks filled in from ``get_base_config()``, so that a config written for
  score_sde / MSGM (their keys only, e.g. no ``sampling.ode_method`` or ``unlearn`` section) works with
  every entry point here: the official tolerances, RK45, and the paper's MSGM settings. Keys the config
  has are never changed; a missing ``unlearn.forget`` is the data set's forget set in the paper
  (``PAPER_FORGET``). Completes a ``ConfigDict`` in place (locked or not) and returns it; a
  ``FrozenConfigDict`` is returned as a completed, unfrozen copy."""
  base = get_base_config()
  dataset = str(config.data.get('dataset', '')).upper() if 'data' in config else ''
  base.unlearn.forget = PAPER_FORGET.get(dataset, base.unlearn.forget)
  missing = list(_missing(base, config))
  if not missing:
    return config
  if isinstance(config, ml_collections.FrozenConfigDict):
    config = ml_collections.ConfigDict(config.as_configdict())
  with config.unlocked():
    for path, default in missing:
      section = config
      for key in path[:-1]:
        section = section[key]
      section[path[-1]] = default
  return config
