"""Scaling laws: FLOPs accounting (flops), IsoFLOP fits (isoflop, Chinchilla approach 2),
parametric L(N, D) fits (parametric, approach 3), sweep plans (sweep), the fits' report and
verdict (report), plots (plots), and the scaling stage that runs a sweep end to end (stage)."""
