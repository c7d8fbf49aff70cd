"""Comparing runs honestly.

* ``seeds.py`` — ``python -m finlight seeds``: one config over several seeds, resumable, tested once each
* ``compare.py`` — ``python -m finlight report``: runs, groups (mean ± std), paired tests (McNemar, bootstrap), plots
"""
