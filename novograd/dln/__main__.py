"""`python -m novograd.dln [key=value ...]`: the deep linear network study (see configs/dln/config.yaml)."""

from novograd.dln.app import main

if __name__ == "__main__":
    main()
