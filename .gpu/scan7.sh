#!/bin/bash
# Session 6 helper scan7 (issue 4, the forward scan kernel): the default and the scan7 sweep configs through
# .gpu/ssd7f.sh (fp64 checks at B1 T4096, difference from the default at B8 T8192, then interleaved no-grad eager /
# graph and fwd+bwd timings at B8 T8192, B2 T32768, B1 T131072 while time is left, then a profile). <= SCAN7_S + 10 s
# wall (default 150); SCAN7_VARIANTS (comma-separated) overrides the list. Run from the repo root, PYTHONPATH=/tmp/site:$PWD set, $OUT writable; the table is $OUT/ssd7f.txt.
export SSD7F_VARIANTS="${SCAN7_VARIANTS:-default,scan7 e2 ftz mr128,scan7 e2 split ftz mr128,scan7 e2 split ftz,scan7 split ftz mr128,scan7 r1 mr128,scan7 ftz mr128,scan7 bm128 w8 split ftz mr128}"
SSD7F_S=${SCAN7_S:-150} bash .gpu/ssd7f.sh
