"""Training and evaluation engine: device placement, autocast, channels_last and compile live here."""
