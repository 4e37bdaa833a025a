"""The deep linear network study of the paper (Section 4, Appendix A), as `python -m novograd.dln`.

`problem` (the model and loss), `optimizers` (the real optimizers and their batched twins), `verdict` (converged,
oscillating, stalled or diverged, computed from a trajectory), `study` (scenario runs and robustness maps),
`plots`, `report` (summary.json, summary.md) and `app` (the Hydra entry point).
"""
