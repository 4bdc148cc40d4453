#!/bin/bash
# lead slot of round 1 (<= 90 s): conv1d backward config sweep (host-free timing), the conv GPU test never reported
timeout 60 python3 .gpu/conv_sweep.py 2>&1 | grep -v -i warn
timeout 28 python3 -m pytest "tests/test_conv1d.py::test_kernel_gpu_big_bf16" -q -p no:cacheprovider -rf 2>&1 | tail -3
