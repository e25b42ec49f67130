"""vlmad-runtime: the torch-free half of vlmad.

Image loading, decisions (deploy files), drawing and file helpers that a line PC needs without torch or open_clip.
`vlmad` builds on this package; nothing here imports `vlmad` (see docs/architecture.md).
"""

from vlmad_runtime.version import __version__

__all__ = ["__version__"]
