"""`python -m amadeus.native`: build the batch-1 kernels now (make setup runs it)."""

from amadeus.native import main

main()
