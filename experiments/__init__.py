"""The paper's experiments as commands: low-data sweeps (Fig. 3) and the Table 2 ablation."""
