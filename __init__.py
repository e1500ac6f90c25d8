"""Read only when Python imports this clone itself as ``faceveil``.

That happens when Python starts in the folder that holds the clone under the name
``faceveil`` (the current folder comes first on ``sys.path``): without this file the
clone would be an empty namespace package and hide the installed one
(``cannot import name '__version__' from 'faceveil' (unknown location)``). Here the
clone becomes the package it holds, laid out as ``pyproject.toml`` maps it:
``faceveil/`` for the top level and ``data/``, ``models/``, ... for the subpackages.
"""

import os as _os

_root = _os.path.dirname(_os.path.abspath(__file__))
__path__ = [_os.path.join(_root, "faceveil"), _root]
with open(_os.path.join(_root, "faceveil", "__init__.py")) as _f:
    exec(compile(_f.read(), _f.name, "exec"))
