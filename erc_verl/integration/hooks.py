"""Run a patch right after a module is imported, without importing it ourselves.

The plugin is loaded while `import verl` is still running, in every process (driver and Ray
workers). Importing verl's engine or trainer modules from there would be slow, would fix the
device platform too early, and the v0 trainer module needs rollout-server packages a worker
never has. So each patch waits for its module: now if it is already imported, else just
after its module code runs.

Robustness: the registry of patches is permanent, so a spec found and thrown away
(`importlib.util.find_spec`), a reload, or a second import after `del sys.modules[...]` all get
the patches again; the re-entrancy guard is per thread and registration takes a lock, so
concurrent first imports in several threads are patched too. Patches must be idempotent.
"""

import importlib.abc
import importlib.util
import sys
import threading

_LOCK = threading.RLock()
_PATCHES: dict[str, list] = {}


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader; applies the module's patches after each execution."""

    def __init__(self, name: str, loader):
        self._name = name
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        apply_patches(self._name, module)

    def __getattr__(self, attr):  # get_source, get_filename, is_package, ... for inspect/pkgutil
        return getattr(self._loader, attr)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self):
        self._local = threading.local()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _PATCHES or getattr(self._local, "busy", False):
            return None
        self._local.busy = True  # find the real spec with the other finders
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._local.busy = False
        if spec is None or spec.loader is None or isinstance(spec.loader, _PatchingLoader):
            return spec
        spec.loader = _PatchingLoader(fullname, spec.loader)
        return spec


_FINDER = _AfterImportFinder()


def apply_patches(name: str, module) -> None:
    with _LOCK:
        patches = list(_PATCHES.get(name, ()))
    for patch in patches:
        patch(module)


def after_import(name: str, patch) -> None:
    """Call patch(module) whenever `name` is (re)imported, and now if it already is."""
    with _LOCK:
        registered = _PATCHES.setdefault(name, [])
        if patch not in registered:
            registered.append(patch)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
        module = sys.modules.get(name)
    if module is not None:
        patch(module)


# verl's own objects as found before erc_verl wrapped them, by "module.attr" / "module.Class.attr".
_ORIGINALS: dict[str, object] = {}


def _owner_name(owner) -> str:
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}"
    return getattr(owner, "__name__", repr(owner))


def wrap(owner, name: str, make, marker: str) -> bool:
    """Set owner.name = make(current) and mark the wrapper, unless current already carries `marker`.

    The one way erc_verl replaces a verl function or method: idempotent (a re-import or a second
    install leaves the wrapper alone), and verl's own object stays reachable through original().
    A method the class only inherits is refused (TypeError naming the class that defines it):
    wrap it there. Returns whether it wrapped.
    """
    if isinstance(owner, type) and name not in vars(owner):
        # Setting it here would shadow the base class's attribute, and with it every later patch of
        # the base (another plugin's, or erc_verl's layout probe): wrap where it is defined.
        defined = next((c.__qualname__ for c in owner.__mro__ if name in vars(c)), None)
        raise TypeError(f"{owner.__qualname__}.{name} is inherited from {defined}; wrap it on {defined}")
    current = getattr(owner, name)
    if getattr(current, marker, False):
        return False
    wrapper = make(current)
    setattr(wrapper, marker, True)
    _ORIGINALS.setdefault(f"{_owner_name(owner)}.{name}", current)
    setattr(owner, name, wrapper)
    return True


def original(dotted: str):
    """verl's object that wrap() replaced at `dotted` ("verl.workers.utils.losses.ppo_loss"), or None."""
    return _ORIGINALS.get(dotted)
