"""Flash attention (placeholder until the references land, issue 2/5)."""


def flash_attention(*args, **kwargs):
    raise NotImplementedError("flash_attention: not implemented yet (issue 5)")
