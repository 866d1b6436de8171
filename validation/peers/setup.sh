#!/usr/bin/env bash
# Create the separate virtual environment for the peer simulators (abTEM, cryoJAX) used by
# `cutem bench --peers` / validation/bench.py --peers. cutem never imports these packages:
# the benchmark runs validation/peers/run_peer.py with this environment's python.
#   usage: validation/peers/setup.sh [VENV]   (default /tmp/peers-venv)
set -euo pipefail
VENV=${1:-/tmp/peers-venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
# versions named in issue 8 (abTEM 1.0.11, cryoJAX 0.6.0); CPU-only JAX
"$VENV/bin/pip" install --quiet "abtem==1.0.11" || echo "abtem: install failed" >&2
"$VENV/bin/pip" install --quiet "cryojax==0.6.0" || echo "cryojax: install failed" >&2
"$VENV/bin/pip" install --quiet numpy gemmi
"$VENV/bin/python" - <<'PY'
for m in ("abtem", "cryojax", "jax"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:  # report, do not fail: the benchmark records why a peer is missing
        print(m, "NOT AVAILABLE:", type(e).__name__, e)
PY
