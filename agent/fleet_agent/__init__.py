"""The earlier agent's import name, kept so the commands users already have keep working.

New code imports ``atlas.agent`` and ``atlas.contract``.
"""
