"""One module per report figure (family), named by it (q1_saliency ... q4_deepdream, trust_table,
appendix_convergence); the contract they share (stage.py, protocol.py, context.py, costs.py,
record.py); the ordered registry (registry.py)."""
