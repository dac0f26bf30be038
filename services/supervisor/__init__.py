"""``depotwatch up``: the whole pipeline on one machine, supervised.

``plan`` decides which processes run (from the facility config, skipping commands this build
lacks); ``process`` runs one child in its own process group; ``supervisor`` restarts, applies
camera changes from config edits and builds the live status; ``status`` formats it.
"""
