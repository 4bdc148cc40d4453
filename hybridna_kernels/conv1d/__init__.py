"""Causal depthwise conv1d (placeholder until the references land, issue 2/3)."""


def causal_conv1d(*args, **kwargs):
    raise NotImplementedError("causal_conv1d: not implemented yet (issue 3)")


def causal_conv1d_step(*args, **kwargs):
    raise NotImplementedError("causal_conv1d_step: not implemented yet (issue 3)")
