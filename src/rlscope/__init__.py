"""rlscope: an observatory for RL post-training of language models."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import rlscope` stays light; `rlscope.attach` pulls in transformers
    if name in ("attach", "Observatory"):
        from rlscope import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module 'rlscope' has no attribute {name!r}")
