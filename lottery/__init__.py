"""The lottery library: the torch core under the DVC stages (see README).

A regular package (not a namespace one), so a stage imports the `lottery/` of the checkout it
runs in, never a copy installed elsewhere. Keep this file free of code: stages list the
modules they import as DVC deps, and this file is not among them.
"""
