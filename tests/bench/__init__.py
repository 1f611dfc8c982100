
# bench CSV cells hold six significant figures (relative rounding up to 5e-6 each): a ratio of two cells, set against
# a third cell, may differ by up to 1.5e-5
ROUNDED_RATIO = 1.5e-5 + 1e-9
