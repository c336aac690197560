"""Ray Tune search over patch_size / bank_size / reg_weight."""
