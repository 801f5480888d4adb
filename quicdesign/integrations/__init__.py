"""Optional integrations with training frameworks (each needs its extra).

- :mod:`quicdesign.integrations.torch` (``pip install quicdesign[torch]``): tensors in and
  out of any :class:`~quicdesign.compressors.Compressor`, and a DDP communication hook.
- :mod:`quicdesign.integrations.flower` (``pip install quicdesign[flower]``): a client mod
  and a server strategy wrapper on Flower's Message API.

Nothing here is imported by ``import quicdesign``.
"""
