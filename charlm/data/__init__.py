"""Data: text -> token ids (`ids`), loaded through a cache (`loading`, `cache`) -> batches (`batches`)."""
