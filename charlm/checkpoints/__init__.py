"""Checkpoints: the safetensors format (`files`), the typed metadata (`metadata`) and the models
rebuilt from them (`loading`)."""
