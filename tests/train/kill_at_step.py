"""Test-only: run the ``ja-instruct`` CLI and SIGKILL the process right after training step N.

    JA_INSTRUCT_TRAIN_FAIL_AT_STEP=N python tests/train/kill_at_step.py train RECIPE
    JA_INSTRUCT_TRAIN_FAIL_AT_STEP=N python tests/train/kill_at_step.py run RECIPE
    torchrun --nproc_per_node 2 tests/train/kill_at_step.py train RECIPE   (every rank dies)

Same arguments as ``python -m ja_instruct.cli``; N comes from ``JA_INSTRUCT_TRAIN_FAIL_AT_STEP``
(or ``JA_INSTRUCT_TEST_KILL_AT_STEP``). The kill simulates a crash or a preemption
after step N's checkpoint (if one is due), through the loop's ``on_step`` hook: the package
itself has no test hook. Without the variable (or with 0) it is the plain CLI.
"""

from __future__ import annotations

import os
import signal
import sys

# Either name works (the second is the one tests/test_pipeline.py sets).
FAIL_AT_STEP_ENVS = ("JA_INSTRUCT_TRAIN_FAIL_AT_STEP", "JA_INSTRUCT_TEST_KILL_AT_STEP")


def main(argv: list[str]) -> int:
    import ja_instruct.train.stage as stage
    from ja_instruct.cli import main as cli_main

    fail_at = next((int(v) for v in map(os.environ.get, FAIL_AT_STEP_ENVS) if v), 0)
    if fail_at:
        real_train = stage.train

        def kill_at(step: int) -> None:
            if step == fail_at:
                os.kill(os.getpid(), signal.SIGKILL)

        def train(*args, **kwargs):
            return real_train(*args, **{**kwargs, "on_step": kill_at})

        # run_training (the `train` and `run` commands) calls stage.train by its module name.
        stage.train = train
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
