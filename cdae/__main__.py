"""``python -m cdae`` (and ``torchrun -m cdae``) run the CLI."""

from cdae.cli import main

if __name__ == "__main__":
    main()
