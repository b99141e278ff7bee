"""Run a patch right after a module is first imported, without importing it ourselves.

The plugin is loaded while `import verl` is still running, in every process (driver and Ray
workers). Importing verl's engine or trainer modules from there would be slow, would fix the
device platform too early, and the v0 trainer module needs rollout-server packages a worker
never has. So each patch waits for its module: now if it is already imported, else just
after its first import.
"""

import importlib.abc
import importlib.util
import sys

_PENDING: dict[str, list] = {}


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self):
        self._busy = False

    def find_spec(self, fullname, path=None, target=None):
        if self._busy or fullname not in _PENDING:
            return None
        self._busy = True  # find the real spec with the other finders
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return spec
        patches = _PENDING.pop(fullname)
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            for patch in patches:
                patch(module)

        spec.loader.exec_module = exec_then_patch
        return spec


_FINDER = _AfterImportFinder()


def after_import(name: str, patch) -> None:
    """Call patch(module) once `name` is imported (at once if it already is). Patches must be idempotent."""
    if name in sys.modules:
        patch(sys.modules[name])
        return
    _PENDING.setdefault(name, [])
    if patch not in _PENDING[name]:
        _PENDING[name].append(patch)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
