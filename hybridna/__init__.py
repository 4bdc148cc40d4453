"""hybridna: HybriDNA, a hybrid Mamba2 + attention DNA language model."""
__version__ = "0.1.0"
