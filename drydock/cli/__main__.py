"""``python -m drydock.cli``: the same as the ``drydock`` command."""

from drydock.cli import main

if __name__ == "__main__":
    main()
