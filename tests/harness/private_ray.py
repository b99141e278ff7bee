"""A local Ray of a test's own: a private temp dir (never /tmp/ray), never a cluster it did not start."""

import contextlib
import shutil

import ray

from erc_verl.rehearsal.ray_cluster import private_temp_dir


@contextlib.contextmanager
def private_ray(**init_kwargs):
    """ray.init(address="local", _temp_dir=<new private dir>, ...), shut down and removed on exit."""
    temp = private_temp_dir()
    temp.mkdir(parents=True)
    try:
        ray.init(address="local", _temp_dir=str(temp), **init_kwargs)
        yield temp
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
