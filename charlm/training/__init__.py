"""Training: settings -> a run (`launch`, `setup`), the loop (`trainer`) with its optimizer and
schedule (`optimization`, `time_budget`), progress, torchrun's shares (`sharing`), the resume
file (`resume`) and a run's files (`run_files`)."""
