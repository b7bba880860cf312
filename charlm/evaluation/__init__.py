"""Evaluation: the loss and what it means, a checkpoint's scores on a file (`reports`), the scores
of translations (`scores`)."""
