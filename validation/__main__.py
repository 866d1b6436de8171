"""``python -m validation gradcheck [...]``: the gradient-check suite (same as ``cutem gradcheck``)."""
import sys

from cutem.cli import run_guarded
from cutem.cli.info import gradcheck

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "gradcheck":
        sys.exit("usage: python -m validation gradcheck [--backend numpy|cupy] [--dtype float32|float64]")
    sys.argv = ["cutem gradcheck"] + args[1:]
    sys.exit(run_guarded(gradcheck))
