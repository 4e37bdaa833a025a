"""The paper's tasks as `novograd.workload.Workload`s, one module each, selected by `workload._target_`.

Nothing is imported here: a workload pulls in its own heavy libraries (torchvision, torchaudio, ...) only when the
engine instantiates it, so that `--cfg job`, `make help` and the other workloads stay quick.
"""
