"""The verl release check at import."""

import pytest

from erc_verl.integration import version as _compat


@pytest.mark.parametrize("found", ["0.9.0", "0.8.3", "0.7.1", "0.10.0"])
def test_other_release_is_refused_naming_the_supported_one(monkeypatch, found):
    monkeypatch.setattr(_compat.metadata, "version", lambda name: found)
    monkeypatch.setattr(_compat, "tree_is_patched", lambda: False)
    with pytest.raises(ImportError, match=r"verl==0\.9\.1") as err:
        _compat.check_verl_version()
    assert found in str(err.value) and "patches/" in str(err.value)


def test_patched_tree_of_a_patch_set_release_is_accepted(monkeypatch):
    monkeypatch.setattr(_compat.metadata, "version", lambda name: "0.7.1")
    monkeypatch.setattr(_compat, "tree_is_patched", lambda: True)
    assert _compat.check_verl_version() == "0.7.1"


def test_missing_verl_names_the_install_command(monkeypatch):
    def missing(name):
        raise _compat.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_compat.metadata, "version", missing)
    with pytest.raises(ImportError, match=r"pip install 'verl==0\.9\.1'"):
        _compat.check_verl_version()


def test_installed_release_is_the_pinned_one():
    assert _compat.check_verl_version() == _compat.SUPPORTED_VERL == "0.9.1"


def test_a_tree_with_the_older_patch_series_is_refused_naming_the_fix(monkeypatch):
    from verl.trainer.ppo import core_algos

    monkeypatch.setattr(core_algos, "POLICY_LOSS_ENTROPY_KWARGS", ("entropy", "old_entropy"), raising=False)
    monkeypatch.delattr(core_algos, "POLICY_LOSS_EXTENSIONS_API", raising=False)
    with pytest.raises(ImportError, match="apply_patches.sh"):
        _compat.tree_is_patched()
