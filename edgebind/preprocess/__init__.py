"""Numpy-only preprocessing: raw sensor data to the exact tensors each ImageBind tower expects.

Nothing here imports torch. Submodules: ``image``, ``video``, ``text``, ``audio``, ``depth``,
``thermal``, ``imu``. Each has a ``preprocess`` function (the stable contract) and a frozen config
dataclass whose ``to_dict()`` is what the bundle manifest records.
"""
