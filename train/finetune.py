"""Entry point: ``accelerate launch train/finetune.py --config configs/tiny.yaml [key=value ...] [--resume latest]``.

Also runs as ``python train/finetune.py ...`` (one process) or under ``torchrun``.
A thin wrapper: the command line lives in :mod:`faceveil.train.loop`, the run in
:mod:`faceveil.train.recipe`. Launched as a script,
this folder is ``sys.path[0]``; no module here may shadow a library's name.
"""

import sys

from faceveil.train.loop import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
