"""Scaling laws: FLOPs accounting (flops), IsoFLOP fits (isoflop, Chinchilla approach 2),
parametric L(N, D) fits (parametric, approach 3), sweeps (sweep) and their reports (report)."""
