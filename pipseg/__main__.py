"""`python -m pipseg` (also `torchrun -m pipseg train CONFIG`)."""

from pipseg.cli import main

if __name__ == "__main__":
    main()
