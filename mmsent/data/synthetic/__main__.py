"""``python -m mmsent.data.synthetic``: see :mod:`mmsent.data.synthetic.cli`."""

from mmsent.data.synthetic.cli import main

# The guard keeps worker processes started with "spawn", which import this module
# again, from generating anew.
if __name__ == "__main__":
    main()
