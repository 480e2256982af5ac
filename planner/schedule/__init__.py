"""Pipeline schedules: per-device action lists, their generators, and a checker.

One schedule per module (`gpipe`, `one_f_one_b`, `interleaved`, `zero_bubble`), all
producing `Schedule` objects (`actions.py`) checked by `check.py`.
"""
