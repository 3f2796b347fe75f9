"""Imported only by multiprocessing's fork server of bnpo/rewards/pool.py (its preload): math-verify imported and run
once there, so that every worker forked from the server starts warm. A cold process needs seconds for its first
check (``import sympy``, then math-verify's first parse), more than a call's whole budget at timeout_s=1."""

from bnpo.rewards import verify

verify.logging_off()
PROBLEM = verify.self_test()  # never raises: an exception here would stop the fork server, not report the problem
