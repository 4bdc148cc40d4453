"""pytest plugin for .gpu/attn.sh (-p attn_order), round 2: the cheap reference / validation cases first, then
the kernel cases that no GPU run has reported yet, last the ones round 1 (14:16 UTC) saw pass on the GPU at
short sequence lengths, whose code paths round 2's default changes (long bucket only) do not touch."""
CHEAP = ("test_reference_", "test_validation_", "test_public_function")
DONE = {
    "test_decode_dispatch_and_its_backward", "test_decode_with_fixed_config_and_fastlaunch",
    "test_kernel_backward_is_deterministic", "test_kernel_block_sizes_agree[causal]",
    "test_kernel_empty_shapes[all-empty]", "test_kernel_empty_shapes[batch0-decode]", "test_kernel_empty_shapes[batch0]",
    "test_kernel_sweep_variants[dq-delta-B2-gqa2]", "test_kernel_sweep_variants[fastlaunch-gqa-offset]",
    "test_kernel_sweep_variants[poly-exp2-fp16-W9-D40]", "test_kernel_sweep_variants[poly-exp2-fp16-gqa-offset]",
} | {f"test_decode_split_k_matches_reference[{d}-{c}]" for d in ("fp16", "fp32")
     for c in ("L1-gqa4", "L16-mqa8", "L3-full", "L5-W37", "splits>blocks")}


def _rank(item):
    if item.name.startswith(CHEAP):
        return 0
    return 2 if item.name in DONE else 1


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)   # stable: the file's order within each group
