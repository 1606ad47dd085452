"""Weight and config conversion between the original HoVLE layout and the transformers folder."""
