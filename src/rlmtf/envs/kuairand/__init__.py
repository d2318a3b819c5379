"""A second environment's foundations, grounded in KuaiRand-Pure (Gao et al., CIKM 2022; CC BY-SA 4.0).

Data flow::

    data.py      load + validate the official files, encode real user / item features
    features.py  leakage-free history features (training days only) for any user-item pair
    response.py  the users' truth: watch-ratio distribution + long_view / like / follow / comment / forward
    mtl.py       the platform's imperfect MTL model: the 5 fusion scores of ``rlmtf.core.fusion.MTL_TASKS``
    fit.py       fit_all(data_dir, out_dir, cfg): fit both, save safetensors + JSON, verified loaders

Files derived from KuaiRand (fitted tables, models) carry the dataset's CC BY-SA 4.0 license.
"""

from rlmtf.envs.kuairand.data import (
    DATASET_URL,
    KuaiRandData,
    KuaiRandDataError,
    download,
    load_kuairand,
    unpack_and_validate,
)

__all__ = ["DATASET_URL", "KuaiRandData", "KuaiRandDataError", "download", "load_kuairand", "unpack_and_validate"]
