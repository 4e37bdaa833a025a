"""Exit statuses of a training process, which `novograd.engine.launcher` reads to decide whether to restart.

- 0: the run finished, or stopped on a signal with its checkpoint written (docs/preemption.md);
- 1: a crash (an exception, a killed worker): restarting resumes from the last checkpoint;
- 2: a usage error (a config error, a missing dataset): the same command fails the same way;
- 3: the run diverged (novograd/engine/nonfinite.py): retrying would diverge again;
- 4: the disk holding the checkpoints is full: nothing can be saved until space is freed;
- 130: interrupted (a second Ctrl-C) before it could checkpoint.
"""

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_NO_SPACE = 4
EXIT_INTERRUPTED = 130

#: Failures a restart cannot fix: the launcher ends the job at once with the worker's status.
NOT_RESTARTED = {
    EXIT_USAGE: "a usage error",
    EXIT_DIVERGED: "the run diverged",
    EXIT_NO_SPACE: "the disk is full",
    EXIT_INTERRUPTED: "interrupted",
}
