"""pytest plugin for .gpu/attn.sh (-p attn_order): run the kernel tests that no GPU run has reported yet first
(session 2's GPU runs were cut after the reference, validation and most kernel_matches_reference cases)."""
FIRST = ["test_decode_split_k", "test_decode_dispatch", "test_decode_with_fixed", "test_kernel_block_sizes",
         "test_kernel_sweep_variants", "test_default_features", "test_kernel_lse_gradient",
         "test_registered_ops_compile", "test_kernel_empty_shapes", "test_kernel_backward_is_deterministic",
         "test_kernel_varlen", "test_kernel_strided", "test_kernel_matches_reference"]


def _rank(item):
    name = item.name
    for i, prefix in enumerate(FIRST):
        if name.startswith(prefix):
            return i
    return len(FIRST)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)   # stable: the file's order within each group
