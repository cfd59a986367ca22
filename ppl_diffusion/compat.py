"""Work-arounds for optional dependencies of the environment."""
from __future__ import annotations

__all__ = ["ensure_diffusers_importable"]


def ensure_diffusers_importable() -> None:
    """Work around a broken optional torchvision (e.g. a CUDA build next to a CPU torch, which
    raises ``operator torchvision::nms does not exist`` on import): diffusers imports torchvision
    whenever it is installed, and the UNet does not need it, so tell diffusers it is absent."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        try:
            import diffusers.utils.import_utils as iu

            iu._torchvision_available = False
        except Exception:  # pragma: no cover
            pass
