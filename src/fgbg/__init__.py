"""fgbg: reproducible foreground/background composite datasets (fg_bg, mask, depth)."""

__version__ = "0.1.0"
