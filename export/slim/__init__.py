"""Network slimming and BN folding: L1 sparsity on BatchNorm scales (a trainer hook),
dependency-aware channel pruning with torch-pruning (``edgeseg prune``), and Conv+BN folding
checked against the unfolded network (``edgeseg fold``)."""
