"""Stage scripts, run from the checkout root as `python -m stages.<name>` (see dvc.yaml).

Running them as modules puts the checkout itself first on sys.path, so each stage imports the
`lottery/` of the checkout it runs in (a queued or cluster experiment runs its own code).
"""
