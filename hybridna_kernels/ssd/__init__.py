"""Mamba2 SSD (placeholder until the references land, issue 2/4)."""


def ssd_scan(*args, **kwargs):
    raise NotImplementedError("ssd_scan: not implemented yet (issue 4)")


def ssd_step(*args, **kwargs):
    raise NotImplementedError("ssd_step: not implemented yet (issue 4)")
