"""hybridna: HybriDNA, a hybrid Mamba2 + attention DNA language model."""
__version__ = "0.1.0"

__all__ = ["HybriDNAConfig", "HybriDNA", "DNATokenizer"]

# Imported on first use: `import hybridna.data` (or the tokenizer) should not pull in torch and the
# Triton kernels, and TRITON_INTERPRET must be read by the kernels' import, not by ours.
_LAZY = {"HybriDNAConfig": "hybridna.config", "HybriDNA": "hybridna.model", "DNATokenizer": "hybridna.tokenizer"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hybridna' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
