#!/bin/bash
# Session 4, call 2's lead slot: the kernel test files whole on the GPU (the files whose GPU cases last session's
# whole-suite run left failed or unverified, and the ones this session's changes touch). Run by round.sh.
OUT=$OUT FILES="${FILES:-tests/test_attention.py tests/test_ssd.py tests/test_conv1d.py tests/test_swiglu.py tests/test_norm.py tests/test_train.py}" \
  T=${T:-270} N=${N:-14} bash .gpu/tests_all.sh
