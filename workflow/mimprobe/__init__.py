"""mimprobe: probe the frozen features of vision backbones."""

__version__ = "0.1.0"
