"""The KuaiRand-Pure environment (Gao et al., CIKM 2022; CC BY-SA 4.0): the real users and videos as a world
of the request engine, with fitted behaviour.

Data flow::

    paths.py        file names, the data directory, the fitted models' cache directory
    data.py         load + validate the official files, encode real user / item features
    download.py     fetch, unpack and validate the official release
    features.py     leakage-free history features (training days only) for any user-item pair
    usage.py        sessions, active days and hours of the log (what the leave / return model is fitted to)
    response.py     the users' truth: watch-ratio distribution + long_view / like / follow / comment / forward
    mtl.py          the platform's imperfect MTL model: the 5 fusion scores of ``rlmtf.core.fusion.MTL_TASKS``
    fit.py          fit_all(data_dir, out_dir, cfg): fit both, save safetensors + JSON, verified loaders
    config.py       the environment's configuration (retrieval, leave and return model)
    split_input.py  fast evaluation of the fitted networks over many user-item pairs
    env.py          KuaiRandEnv: the world's hooks for the engine
    calibrate.py    the leave / return offsets calibrated to the log's usage

Files derived from KuaiRand (fitted tables, models) carry the dataset's CC BY-SA 4.0 license.
"""

from rlmtf.envs.kuairand.data import KuaiRandData, load_kuairand
from rlmtf.envs.kuairand.download import DATASET_URL, download, unpack_and_validate
from rlmtf.envs.kuairand.paths import KuaiRandDataError

__all__ = ["DATASET_URL", "KuaiRandData", "KuaiRandDataError", "download", "load_kuairand", "unpack_and_validate"]
