"""``python -m cutem.cli``: the ``cutem`` command without the console script on PATH."""
from . import entry

entry()
