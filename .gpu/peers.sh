#!/bin/bash
# Fill .peers/ (ignored by git) with mamba_ssm's Triton SSD ops from its PyPI sdist, for bench/bench_ssd.py's peer
# rows on the GPU machine (carry .peers). Only the pure-Triton files are taken, under a stub package whose
# __init__ is empty, so nothing is built. Peer code is never committed. Run once from the repo root.
set -euo pipefail
V=${MAMBA_SSM_VERSION:-2.3.2.post1}
grep -qx '/.peers/' .git/info/exclude 2>/dev/null || echo '/.peers/' >> .git/info/exclude
T=$(mktemp -d)
url=$(python3 -c "import json, urllib.request; d = json.load(urllib.request.urlopen('https://pypi.org/pypi/mamba-ssm/json')); print([u['url'] for u in d['releases']['$V'] if u['filename'].endswith('.tar.gz')][0])")
curl -sSL "$url" | tar xz -C "$T"
S=$(echo "$T"/mamba_ssm-*/mamba_ssm)
mkdir -p .peers/mamba_ssm/ops/triton .peers/mamba_ssm/utils
cp "$S"/ops/triton/*.py .peers/mamba_ssm/ops/triton/
cp "$S"/utils/determinism.py "$S"/utils/torch.py .peers/mamba_ssm/utils/
touch .peers/mamba_ssm/__init__.py .peers/mamba_ssm/ops/__init__.py .peers/mamba_ssm/utils/__init__.py
rm -rf "$T"; du -sh .peers
