"""Comparison models trained, scored and sampled like NP-DRAW (not NP-DRAW components): a plain
convolutional VAE with the same encoder/decoder widths as the run it is compared with."""
