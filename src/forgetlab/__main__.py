"""``python -m forgetlab`` (and ``accelerate launch -m forgetlab ...``): the command line."""

from forgetlab.cli import main

if __name__ == "__main__":
    main()
