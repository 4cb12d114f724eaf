"""The three routing layers: classifier (1), bandit selector (2) and semantic cache (3).

Each layer has one small abstract interface in its ``base`` module and a registry that maps a
config name to a lazily imported implementation, so ``import layers`` pulls in no heavy library.
"""
