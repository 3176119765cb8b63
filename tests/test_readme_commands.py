"""The README's ``main.py`` command lines run as written — flags, tasks (official names too), modes and config
overrides — on tiny settings: each command's config file is wrapped by one that shrinks it (an 8×8 offline
data set where the file's data need a download, a small network, a few steps and samples)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

WRAPPER = '''import sys
sys.path.insert(0, {tests!r})
from tiny_shrink import shrink
from {module} import get_config as _get_config


def get_config():
  return shrink(_get_config(), {data!r})
'''


def readme_commands():
  """Every ``python3 main.py …`` command in the README's fenced code blocks (continuation lines joined)."""
  text = (ROOT / 'README.md').read_text()
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', text, re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.strip()
      if line.startswith('python3 main.py'):
        commands.append(shlex.split(line, comments=True)[2:])
  return commands


def test_the_readme_has_main_py_commands():
  modes = {args[args.index('--mode') + 1] for args in readme_commands()}
  assert {'train', 'eval', 'train_classifier'} <= modes


def test_readme_commands_run_on_tiny_settings(tmp_path):
  data = tmp_path / 'data'
  places, produced = {}, {}

  def place(name):
    """README placeholders (W, C, runs/…) → folders of this test, one per name."""
    return places.setdefault(name, str(tmp_path / 'w' / name.replace('/', '_')))

  def run(args):
    p = subprocess.run([sys.executable, str(ROOT / 'main.py'), *args, '--progress=false'], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 0, f'{shlex.join(args)}\n{p.stderr[-3000:]}'

  for i, args in enumerate(readme_commands()):
    args = list(args)
    config_file = args[args.index('--config') + 1]
    module = config_file[:-3].replace('/', '.')
    wrapper = tmp_path / f'config_{i}.py'
    wrapper.write_text(WRAPPER.format(tests=str(ROOT / 'tests'), module=module, data=str(data)))
    args[args.index('--config') + 1] = str(wrapper)
    workdir = args[args.index('--workdir') + 1]
    mode = args[args.index('--mode') + 1]
    folder = place(f'{workdir}@{config_file}')   # the README reuses W for runs of different configs
    if mode == 'train' and os.path.isdir(folder):  # an alternative command for the same W: its own folder
      folder = place(f'{workdir}@{config_file}#{i}')
    args[args.index('--workdir') + 1] = folder
    for j, a in enumerate(args):
      if a.startswith('--config.training.pretrained='):
        args[j] = f'--config.training.pretrained={produced["checkpoint"]}'
      elif a.startswith('--config.eval.classifier='):
        where = a.split('=', 1)[1].rsplit('/', 1)[0]
        args[j] = f'--config.eval.classifier={place(f"{where}@{config_file}")}/classifier.pth'
    if mode == 'eval' and not os.path.isdir(os.path.join(args[args.index('--workdir') + 1], 'checkpoints')):
      train = [a for a in args if not a.startswith('--config.eval.')]
      train[train.index('--mode') + 1] = 'train'
      run(train)   # the README evaluates a run trained as above: train the tiny one first
    run(args)
    if mode == 'train' and 'checkpoint' not in produced:
      produced['checkpoint'] = os.path.join(args[args.index('--workdir') + 1], 'checkpoints', 'checkpoint_1.pth')
  assert produced and os.path.isfile(produced['checkpoint'])
