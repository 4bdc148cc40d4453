#!/bin/bash
# decode (issue 6 speed), final call: the headline rows with the FINAL defaults only (<= 60 s).
# perop = HYBRIDNA_FUSED_DECODE=0 (session 2's step); default = fused decode step + PDL (the defaults now).
# graph ms = CUDA events over 100 replayed steps (median of 5); host us = enqueue time per step.
set -u
export PYTHONPATH=$PWD:${PYTHONPATH:-}
t0=$(date +%s)
echo "## decode final: 300m bf16 batch 1; perop = old step, default = fused + PDL"
timeout 55 python3 -u bench/profile_decode.py --prompts 1024,131072 --modes perop,default --gen-modes default \
  --no-check --prefill 2>&1 | grep -v "^USDT\|Warning\|warn(\|^ *warnings\.\|^$" | tail -25
echo "profile rc=${PIPESTATUS[0]} ($(( $(date +%s) - t0 )) s)"
