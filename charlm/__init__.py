"""charlm: character-level language models and string-to-string models on recurrent networks.

Pipeline, one module each: text (tokenizers, Vocab) -> data (ids, batches) -> model / cells /
kernels -> trainer -> checkpoint -> generate -> cli. Importing the package imports no torch.
"""

__version__ = "0.1.0"
