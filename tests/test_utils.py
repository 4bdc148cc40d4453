import pytest
import torch

from hybridna_kernels.utils import check_tensor, new_empty


def test_new_empty_is_poisoned_in_tests():
    t = new_empty((3, 4), dtype=torch.float32, device="cpu")
    assert torch.isnan(t).all()


@pytest.mark.parametrize(
    "kwargs, t, match",
    [
        ({"ndim": 3}, torch.zeros(2, 2), "x: expected a 3-d tensor"),
        ({"shape": (2, None, 4)}, torch.zeros(2, 3, 5), r"x: expected shape \(2, \*, 4\)"),
        ({"dtypes": (torch.float16,)}, torch.zeros(2), "x: expected dtype float16"),
        ({"contiguous_dims": (0,)}, torch.zeros(3, 4), "x: dim 0 must be contiguous"),
        ({"min_len": {1: 1}}, torch.zeros(2, 0), "x: dim 1 must have at least 1"),
    ],
    ids=["rank", "shape", "dtype", "stride", "empty"],
)
def test_check_tensor_errors_name_the_argument(kwargs, t, match):
    with pytest.raises(ValueError, match=match):
        check_tensor("x", t, **kwargs)


def test_next_pow2_matches_triton():
    """The host-side next_pow2 (plain Python) agrees with triton.next_power_of_2, which the launchers used."""
    import triton

    from hybridna_kernels.utils import next_pow2

    for n in list(range(0, 300)) + [1000, 1023, 1024, 1025, 4096, 65535, 65536, 2**31 - 1, 2**31]:
        assert next_pow2(n) == triton.next_power_of_2(n), n
