"""``python -m mmsent.data.synthetic``: see :mod:`mmsent.data.synthetic.cli`."""

from mmsent.data.synthetic.cli import main

# Worker processes started with "spawn" import this module again and must not generate.
if __name__ == "__main__":
    main()
